#pragma once
// effnet-train's data-parallel plumbing: who launched us (rank, world size, local rank from
// mpirun, srun or torchrun-style variables), and the Communicator the training loop reduces
// through: MPI (CPU engine, and the host side of GPU runs launched by mpirun / srun), a
// single-process no-op, and (CUDA builds with NCCL) NCCL for the GPU (nccl_communicator.cpp).
// No transport of our own: MPI or NCCL carry every byte.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace effnet {
class GradientAllReduce;
}

namespace effnet::examples {

// Where this process sits in the job, from the launcher's environment.
struct Launch {
    int rank = 0, world = 1, local_rank = 0;
    // "single" (no launcher, or a world of 1), "mpirun" (Open MPI: OMPI_COMM_WORLD_*; MPICH / Intel:
    // PMI_*), "srun" (SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID), "torchrun" (RANK /
    // WORLD_SIZE / LOCAL_RANK).
    std::string launcher = "single";
    bool mpi_launcher() const { return launcher == "mpirun" || launcher == "srun"; }
};
// Reads the environment; throws effnet::Error on inconsistent values (rank outside the world).
Launch detect_launch();
// Whether this binary was built with MPI (EFFNET_WITH_MPI) and with NCCL (EFFNET_WITH_NCCL).
bool built_with_mpi();
bool built_with_nccl();
// The message for a multi-process launch this build cannot serve.
std::string how_to_get_mpi();

class Communicator {
public:
    virtual ~Communicator() = default;
    int rank() const { return rank_; }
    int world() const { return world_; }
    int local_rank() const { return local_rank_; }
    virtual std::string backend() const = 0; // "single", "mpi", "nccl"

    // In place over all ranks (every rank calls with the same n, in the same order).
    virtual void allreduce_sum(float* data, size_t n) = 0;
    virtual void allreduce_sum(double* data, size_t n) = 0;
    void allreduce_avg(float* data, size_t n); // sum, then times 1 / world
    virtual void broadcast(void* data, size_t bytes, int root) = 0;
    virtual void barrier() = 0;
    // Ends every rank of the job now (MPI_Abort; NCCL: abort the communicator and exit).
    [[noreturn]] virtual void abort(int code) = 0;

protected:
    int rank_ = 0, world_ = 1, local_rank_ = 0;
};

// World 1: every operation is the identity.
std::unique_ptr<Communicator> make_single_process();
// MPI_COMM_WORLD (initialises MPI; MPI_Finalize when destroyed). Throws effnet::Error when built
// without MPI, or when MPI's world differs from the launcher's (e.g. srun without PMIx support).
std::unique_ptr<Communicator> make_mpi_communicator(const Launch& launch);
// NCCL over the GPU `launch.local_rank % devices` (CUDA builds with NCCL). The unique id comes
// from rank 0 through `bootstrap` (an MPI communicator) when given, else through the file
// `init_file` on a shared filesystem (written atomically by rank 0, polled by the others for up
// to timeout_s; rank 0 removes it once every rank has joined).
std::unique_ptr<Communicator> make_nccl_communicator(const Launch& launch, Communicator* bootstrap,
                                                     const std::string& init_file, double timeout_s);
// The GPU trainer's view of an NCCL communicator (null for any other), and its GPU (0 for any other).
GradientAllReduce* gradient_allreduce_of(Communicator* comm);
int gpu_of(Communicator* comm);

} // namespace effnet::examples
