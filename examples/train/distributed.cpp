// effnet-train's launch detection and the single-process and MPI communicators (see
// distributed.hpp). MPI is optional (EFFNET_WITH_MPI): without it a multi-process launch is
// refused with how_to_get_mpi().
#include "distributed.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "effnet/error.hpp"

#ifdef EFFNET_WITH_MPI
#include <mpi.h>
#endif

namespace effnet::examples {
namespace {

// An integer environment variable: nullopt-like -1 when unset or empty; throws when malformed.
long env_int(const char* name) {
    const char* v = std::getenv(name);
    if (!v || !*v) return -1;
    errno = 0;
    char* end = nullptr;
    const long x = std::strtol(v, &end, 10);
    EFFNET_CHECK(errno == 0 && end && *end == '\0' && x >= 0 && x <= INT_MAX,
                 std::string("environment variable ") + name + "='" + v + "' is not a non-negative integer");
    return x;
}

bool env_set(const char* name) {
    const char* v = std::getenv(name);
    return v && *v;
}

class SingleProcess : public Communicator {
public:
    std::string backend() const override { return "single"; }
    void allreduce_sum(float*, size_t) override {}
    void allreduce_sum(double*, size_t) override {}
    void broadcast(void*, size_t, int) override {}
    void barrier() override {}
    [[noreturn]] void abort(int code) override { std::_Exit(code); }
};

#ifdef EFFNET_WITH_MPI
void mpi_check(int rc, const char* what) {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING] = {};
    int len = 0;
    MPI_Error_string(rc, text, &len);
    throw Error(std::string("MPI: ") + what + " failed: " + std::string(text, size_t(len)));
}

class MpiCommunicator : public Communicator {
public:
    explicit MpiCommunicator(const Launch& launch) {
        int initialised = 0;
        MPI_Initialized(&initialised);
        if (!initialised) {
            int provided = 0;
            // Only the main thread calls MPI (the data loader's workers never do).
            mpi_check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
        }
        // Errors come back as codes (thrown as effnet::Error naming the call) instead of MPI's
        // default abort without our "error: rank R" line.
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
        mpi_check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
        mpi_check(MPI_Comm_size(MPI_COMM_WORLD, &world_), "MPI_Comm_size");
        local_rank_ = launch.local_rank;
        if (world_ != launch.world || rank_ != launch.rank) {
            const std::string msg =
                "MPI sees rank " + std::to_string(rank_) + " of " + std::to_string(world_) + " but " +
                launch.launcher + " started rank " + std::to_string(launch.rank) + " of " +
                std::to_string(launch.world) +
                (launch.launcher == "srun"
                     ? " (Open MPI under Slurm needs PMIx: srun --mpi=pmix, or use mpirun "
                       "inside the allocation)"
                     : "");
            MPI_Finalize();
            throw Error(msg);
        }
    }
    ~MpiCommunicator() override {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) MPI_Finalize();
    }
    std::string backend() const override { return "mpi"; }
    void allreduce_sum(float* data, size_t n) override { reduce(data, n, MPI_FLOAT); }
    void allreduce_sum(double* data, size_t n) override { reduce(data, n, MPI_DOUBLE); }
    void broadcast(void* data, size_t bytes, int root) override {
        EFFNET_CHECK(bytes <= size_t(INT_MAX), "MPI broadcast of more than 2 GiB");
        mpi_check(MPI_Bcast(data, int(bytes), MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
    }
    void barrier() override { mpi_check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }
    [[noreturn]] void abort(int code) override {
        MPI_Abort(MPI_COMM_WORLD, code);
        std::_Exit(code); // not reached
    }

private:
    void reduce(void* data, size_t n, MPI_Datatype type) {
        // In chunks of < 2^31 elements (MPI's int counts).
        const size_t chunk = size_t(1) << 30;
        const size_t elem = type == MPI_FLOAT ? 4 : 8;
        for (size_t done = 0; done < n; done += chunk) {
            const size_t len = std::min(chunk, n - done);
            mpi_check(MPI_Allreduce(MPI_IN_PLACE, static_cast<char*>(data) + done * elem, int(len), type,
                                    MPI_SUM, MPI_COMM_WORLD),
                      "MPI_Allreduce");
        }
    }
};
#endif

} // namespace

bool built_with_mpi() {
#ifdef EFFNET_WITH_MPI
    return true;
#else
    return false;
#endif
}

bool built_with_nccl() {
#ifdef EFFNET_WITH_NCCL
    return true;
#else
    return false;
#endif
}

std::string how_to_get_mpi() {
    return "this effnet-train was built without MPI, which multi-process training on the CPU and "
           "mpirun/srun launches need: install Open MPI (Debian: apt-get install openmpi-bin "
           "libopenmpi-dev), reconfigure (cmake -DEFFNET_WITH_MPI=ON) and rebuild";
}

Launch detect_launch() {
    Launch l;
    auto take = [&](const char* launcher, const char* rank, const char* world, const char* local) {
        l.launcher = launcher;
        l.rank = int(env_int(rank));
        l.world = int(env_int(world));
        const long lr = env_int(local);
        l.local_rank = lr >= 0 ? int(lr) : 0;
        EFFNET_CHECK(l.rank >= 0 && l.world >= 1 && l.rank < l.world,
                     std::string(launcher) + ": rank " + std::to_string(l.rank) + " of world size " +
                         std::to_string(l.world) + " (" + rank + " / " + world + ")");
    };
    if (env_set("OMPI_COMM_WORLD_SIZE")) // Open MPI's mpirun
        take("mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK");
    else if (env_set("PMI_SIZE") && env_set("PMI_RANK")) // MPICH / Intel MPI (Hydra)
        take("mpirun", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID");
    else if (env_set("WORLD_SIZE") && env_set("RANK")) // torchrun and its imitators
        take("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK");
    else if (env_set("SLURM_STEP_NUM_TASKS") && env_set("SLURM_PROCID")) // srun (not the batch script itself)
        take("srun", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID");
    if (l.world == 1) l.launcher = "single";
    return l;
}

void Communicator::allreduce_avg(float* data, size_t n) {
    allreduce_sum(data, n);
    const float inv = 1.0f / float(world_);
    for (size_t i = 0; i < n; ++i) data[i] *= inv;
}

std::unique_ptr<Communicator> make_single_process() {
    return std::make_unique<SingleProcess>();
}

std::unique_ptr<Communicator> make_mpi_communicator(const Launch& launch) {
#ifdef EFFNET_WITH_MPI
    return std::make_unique<MpiCommunicator>(launch);
#else
    (void)launch;
    throw Error(how_to_get_mpi());
#endif
}

#ifndef EFFNET_WITH_NCCL
GradientAllReduce* gradient_allreduce_of(Communicator*) {
    return nullptr;
}

int gpu_of(Communicator*) {
    return 0;
}

std::unique_ptr<Communicator> make_nccl_communicator(const Launch&, Communicator*, const std::string&,
                                                     double) {
    throw Error(
        "this effnet-train was built without NCCL, which multi-GPU training needs: build with "
        "CUDA (-DEFFNET_ENABLE_CUDA=ON) where the CUDA toolkit's NCCL (nccl.h, libnccl) is installed");
}
#endif

} // namespace effnet::examples
