// transport/placement.h: where this rank sits in the world, read from the environment so the same
// binary runs under any launcher.
//
// The rank model: R ranks on N logical nodes with L = R/N local ranks each, rank = node*L + local.
// A logical node is the NVLink domain (ranks that map each other's heap); several logical nodes may
// share one host (shm-emulated RDMA domain) and a host may also hold exactly one node.
//
// Sources, first match wins; every EPX_* variable overrides the value found in the others:
//   epx-run   EPX_RANK EPX_WORLD_SIZE EPX_LOCAL_RANK EPX_LOCAL_SIZE EPX_MASTER_ADDR EPX_MASTER_PORT EPX_JOB_ID
//   torchrun  RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE MASTER_ADDR MASTER_PORT TORCHELASTIC_RUN_ID
//   Open MPI  OMPI_COMM_WORLD_RANK OMPI_COMM_WORLD_SIZE OMPI_COMM_WORLD_LOCAL_RANK OMPI_COMM_WORLD_LOCAL_SIZE
//   Slurm     SLURM_PROCID SLURM_NTASKS SLURM_LOCALID SLURM_NTASKS_PER_NODE|SLURM_TASKS_PER_NODE SLURM_JOB_ID
//   none      a single rank (rank 0 of 1)
// Master address: EPX_MASTER_ADDR, else MASTER_ADDR, else 127.0.0.1 when all ranks are on one host.
// Master port: EPX_MASTER_PORT, else MASTER_PORT, else 29500 (+ SLURM_JOB_ID % 1000 under Slurm).
// Job id: EPX_JOB_ID, else the launcher's, else derived from the master endpoint; an empty one is unset.
// Incarnation: EPX_RESTART_COUNT (set by `epx-run --respawn`: 0 for a rank's first process, k for its
// k-th restart), else 0. It only tells a restarted process that it is one (fault injection arms in the
// first incarnation only, core/fault.h); joining the job again needs nothing from it (transport/bootstrap.h).
#pragma once

#include <functional>
#include <string>

#include "core/status.h"

namespace epx {

struct Placement {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;  // index inside the logical node
  int local_size = 1;  // L: ranks per logical node
  int node = 0;        // rank / L
  int num_nodes = 1;   // R / L
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string job_id;    // same on every rank of one job; names sockets so jobs never collide
  std::string launcher;  // "epx-run", "torchrun", "openmpi", "slurm", "single"
  int restart_count = 0;  // EPX_RESTART_COUNT: this process is the rank's restart number k (0: first)

  int RankOf(int node_index, int local) const { return node_index * local_size + local; }
  std::string ToString() const;
};

// Environment lookup, injectable for tests; returns nullptr when a variable is unset.
using EnvFn = std::function<const char*(const char*)>;
EnvFn ProcessEnv();

// Errors (kInvalidArgument) name the variable and the value: "EPX_RANK='x': not an integer",
// "RANK=4 is not below WORLD_SIZE=4", "WORLD_SIZE=6 is not divisible by LOCAL_WORLD_SIZE=4", ...
StatusOr<Placement> PlacementFromEnv(const EnvFn& env = ProcessEnv());

}  // namespace epx
