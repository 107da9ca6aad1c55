// NCCL for effnet-train's multi-GPU runs (CUDA builds where the toolkit has NCCL:
// EFFNET_WITH_NCCL). One communicator per process on the GPU local_rank % devices. The unique
// id travels by MPI_Bcast (mpirun / srun launches: `bootstrap` is the MPI communicator) or, for
// torchrun-style launches without MPI, by a file on a shared filesystem (--dist-init-file):
// rank 0 writes it atomically (temporary + rename), the others poll for it; rank 0 removes it
// once every rank has joined. Host buffers (losses, counts) are reduced through a device copy.
// Compiled here, never run on this project's GPU-less machines: see the report of issue 12.
#ifdef EFFNET_WITH_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "distributed.hpp"
#include "effnet/error.hpp"
#include "effnet/gpu_training.hpp"

namespace effnet::examples {
namespace {

void nccl_check(ncclResult_t rc, const char* what) {
    if (rc != ncclSuccess) throw Error(std::string("NCCL: ") + what + " failed: " + ncclGetErrorString(rc));
}
void cuda_check(cudaError_t rc, const char* what) {
    if (rc != cudaSuccess) throw Error(std::string("CUDA: ") + what + " failed: " + cudaGetErrorString(rc));
}

std::string to_hex(const ncclUniqueId& id) {
    static const char* digits = "0123456789abcdef";
    std::string s;
    for (size_t i = 0; i < sizeof id.internal; ++i) {
        const unsigned char c = static_cast<unsigned char>(id.internal[i]);
        s += digits[c >> 4];
        s += digits[c & 15];
    }
    return s;
}

bool from_hex(const std::string& s, ncclUniqueId& id) {
    if (s.size() != 2 * sizeof id.internal) return false;
    for (size_t i = 0; i < sizeof id.internal; ++i) {
        const int v = std::stoi(s.substr(2 * i, 2), nullptr, 16);
        id.internal[i] = static_cast<char>(v);
    }
    return true;
}

// The id file: "effnet-nccl-id 1 <world> <hex id>\n".
void write_id_file(const std::string& path, const ncclUniqueId& id, int world) {
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    {
        std::ofstream out(tmp, std::ios::trunc);
        out << "effnet-nccl-id 1 " << world << " " << to_hex(id) << "\n";
        out.flush();
        EFFNET_CHECK(out.good(), "--dist-init-file: cannot write '" + tmp + "'");
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    EFFNET_CHECK(!ec, "--dist-init-file: cannot rename '" + tmp + "' to '" + path + "': " + ec.message());
}

ncclUniqueId read_id_file(const std::string& path, int world, double timeout_s) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    for (;;) {
        std::ifstream in(path);
        std::string magic, hex;
        int version = 0, w = 0;
        ncclUniqueId id{};
        if (in >> magic >> version >> w >> hex) {
            EFFNET_CHECK(magic == "effnet-nccl-id" && version == 1 && from_hex(hex, id),
                         "--dist-init-file '" + path + "' is not an effnet NCCL id file");
            EFFNET_CHECK(w == world, "--dist-init-file '" + path + "' is for a world of " +
                                         std::to_string(w) + " ranks, this job has " + std::to_string(world) +
                                         " (a file left by another run? remove it)");
            return id;
        }
        EFFNET_CHECK(std::chrono::steady_clock::now() < deadline,
                     "--dist-init-file '" + path + "': rank 0 wrote no id within " +
                         std::to_string(int(timeout_s)) +
                         " s (is the path on a filesystem every rank sees?)");
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
}

class NcclCommunicator : public Communicator, public GradientAllReduce {
public:
    NcclCommunicator(const Launch& launch, Communicator* bootstrap, const std::string& init_file,
                     double timeout_s) {
        rank_ = launch.rank;
        world_ = launch.world;
        local_rank_ = launch.local_rank;
        int devices = 0;
        cuda_check(cudaGetDeviceCount(&devices), "cudaGetDeviceCount");
        EFFNET_CHECK(devices > 0, "rank " + std::to_string(rank_) + ": no GPU");
        device_ = local_rank_ % devices;
        cuda_check(cudaSetDevice(device_), "cudaSetDevice");
        ncclUniqueId id{};
        if (rank_ == 0) nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
        if (bootstrap) {
            bootstrap->broadcast(&id, sizeof id, 0);
        } else {
            EFFNET_CHECK(
                !init_file.empty(),
                launch.launcher + " started " + std::to_string(world_) +
                    " processes without MPI: give --dist-init-file PATH (a file on a filesystem every "
                    "rank sees) for NCCL's id, or launch with mpirun / srun");
            if (rank_ == 0)
                write_id_file(init_file, id, world_);
            else
                id = read_id_file(init_file, world_, timeout_s);
        }
        nccl_check(ncclCommInitRank(&comm_, world_, id, rank_), "ncclCommInitRank");
        cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
        // Every rank has joined: the id file has served (a later run must not read it).
        barrier();
        if (!bootstrap && rank_ == 0) std::remove(init_file.c_str());
    }
    ~NcclCommunicator() override {
        if (scratch_) cudaFree(scratch_);
        if (comm_) ncclCommDestroy(comm_);
        if (stream_) cudaStreamDestroy(stream_);
    }

    std::string backend() const override { return "nccl"; }
    int world() const override { return world_; }

    void allreduce_sum(float* data, size_t n) override { host_reduce(data, n * 4, n, ncclFloat); }
    void allreduce_sum(double* data, size_t n) override { host_reduce(data, n * 8, n, ncclDouble); }
    void broadcast(void* data, size_t bytes, int root) override {
        void* d = device_scratch(bytes);
        cuda_check(cudaMemcpyAsync(d, data, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
        nccl_check(ncclBroadcast(d, d, bytes, ncclChar, root, comm_, stream_), "ncclBroadcast");
        cuda_check(cudaMemcpyAsync(data, d, bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
        cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    }
    void barrier() override {
        float x = 0;
        allreduce_sum(&x, 1);
    }
    [[noreturn]] void abort(int code) override {
        // The other ranks' collectives fail or hang; their launcher (torchrun) ends them when
        // this process exits non-zero.
        if (comm_) ncclCommAbort(comm_);
        comm_ = nullptr;
        std::_Exit(code);
    }

    // GradientAllReduce: the GPU trainer's buckets, on its communication stream.
    void allreduce_sum(float* device_data, int64_t count, void* cuda_stream) override {
        nccl_check(ncclAllReduce(device_data, device_data, size_t(count), ncclFloat, ncclSum, comm_,
                                 static_cast<cudaStream_t>(cuda_stream)),
                   "ncclAllReduce");
    }
    bool all_true(bool flag) override {
        double bad = flag ? 0.0 : 1.0;
        allreduce_sum(&bad, 1);
        return bad == 0.0;
    }
    int device() const { return device_; }

private:
    void* device_scratch(size_t bytes) {
        if (bytes > scratch_bytes_) {
            if (scratch_) cudaFree(scratch_);
            scratch_ = nullptr;
            cuda_check(cudaMalloc(&scratch_, bytes), "cudaMalloc");
            scratch_bytes_ = bytes;
        }
        return scratch_;
    }
    void host_reduce(void* data, size_t bytes, size_t n, ncclDataType_t type) {
        void* d = device_scratch(bytes);
        cuda_check(cudaMemcpyAsync(d, data, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
        nccl_check(ncclAllReduce(d, d, n, type, ncclSum, comm_, stream_), "ncclAllReduce");
        cuda_check(cudaMemcpyAsync(data, d, bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
        cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    }

    ncclComm_t comm_ = nullptr;
    cudaStream_t stream_ = nullptr;
    void* scratch_ = nullptr;
    size_t scratch_bytes_ = 0;
    int device_ = 0;
};

} // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const Launch& launch, Communicator* bootstrap,
                                                     const std::string& init_file, double timeout_s) {
    return std::make_unique<NcclCommunicator>(launch, bootstrap, init_file, timeout_s);
}

GradientAllReduce* gradient_allreduce_of(Communicator* comm) {
    return dynamic_cast<NcclCommunicator*>(comm);
}

int gpu_of(Communicator* comm) {
    auto* nccl = dynamic_cast<NcclCommunicator*>(comm);
    return nccl ? nccl->device() : 0;
}

} // namespace effnet::examples
#endif
