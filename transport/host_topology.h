// transport/host_topology.h: what this host has (PUs, cores, NUMA nodes, where devices sit) and how
// the ranks started on it are pinned to it.
//
// Discovery uses hwloc, restricted to the cpus this process may run on (cgroups, taskset), so a
// launcher started under `taskset -c 4-7` plans over those four cpus only. The pinning plan is a pure
// function of the topology so it can be unit-tested on synthetic topologies ("pack:2 core:4 pu:2").
//
// Plan rules (PlanPinning):
//   * ranks are spread over the NUMA nodes that have cpus in contiguous blocks (ranks 0..k-1 on the
//     first node, ...), block sizes proportional to each node's core count;
//   * cores >= ranks: every rank gets its own disjoint set of whole cores (all their PUs);
//   * cores <  ranks: the ranks of a node share its cores round-robin (local block index mod cores),
//     and the plan says `oversubscribed` so the launcher can say so once.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace epx {

struct TopoCore {
  int numa_node = -1;    // os index of the NUMA node holding this core
  std::vector<int> pus;  // os indices of its PUs (hardware threads), ascending
};

struct TopoNumaNode {
  int os_index = -1;
  std::vector<int> cpus;   // os indices of the PUs local to this node, ascending (empty: memory-only)
  std::vector<int> cores;  // indices into HostTopology::cores
  uint64_t memory_bytes = 0;
};

struct HostTopology {
  std::vector<TopoCore> cores;           // in hwloc logical order (locality order)
  std::vector<TopoNumaNode> numa_nodes;  // in hwloc logical order; includes memory-only nodes

  int NumPus() const;
  int NumCores() const { return static_cast<int>(cores.size()); }
  // "2 NUMA nodes, 8 cores, 16 PUs: node 0 cpus 0-7, node 1 cpus 8-15"
  std::string ToString() const;

  // This machine, as far as this process is allowed to run.
  static StatusOr<HostTopology> Discover();
  // A synthetic hwloc topology (hwloc_topology_set_synthetic syntax), for tests and what-if plans.
  static StatusOr<HostTopology> FromSynthetic(std::string_view description);
};

// NUMA node (os index) nearest to an OS device such as an RDMA device ("mlx5_0", "rxe0") or a netdev
// ("eth0"); -1 when unknown (no such device, no locality information, or it spans several nodes).
// Soft-RoCE devices have no PCI parent of their own; they are resolved through their parent netdev.
int DeviceNumaNode(std::string_view device_name);

struct RankPin {
  int host_index = 0;     // index among the ranks started on this host (0..ranks_on_host-1)
  int numa_node = -1;     // os index
  std::vector<int> cpus;  // os indices, ascending
};

struct PinPlan {
  std::vector<RankPin> ranks;
  int cores = 0;                // cores available to the plan
  bool oversubscribed = false;  // cores < ranks: several ranks share a core
  // "epx-run: 8 ranks on 2 cores: sharing cores round-robin" when oversubscribed, else "".
  std::string OversubscriptionNote() const;
};

// Pure; ranks_on_host <= 0 or a topology without cpus gives an empty plan.
PinPlan PlanPinning(const HostTopology& topo, int ranks_on_host);

// Applies one plan entry to the calling process: sched_setaffinity to its cpus and a preferred-node
// memory policy (MPOL_PREFERRED) on its NUMA node; both survive execve. Meant for the forked child
// before exec. A memory policy the kernel refuses (seccomp in containers: EPERM; no NUMA: ENOSYS) is
// skipped, since placement of memory is an optimisation; *mempolicy_applied (if given) says which.
Status ApplyPin(const RankPin& pin, bool* mempolicy_applied = nullptr);

// {0,1,2,3,8} -> "0-3,8" (ranges = true, for people) or "0,1,2,3,8" (ranges = false: the EPX_CPUS
// form, trivially split by any consumer). Parsing accepts both forms.
std::string FormatCpuList(const std::vector<int>& cpus, bool ranges = true);
StatusOr<std::vector<int>> ParseCpuList(std::string_view text);
// The cpus the calling process may run on (sched_getaffinity), ascending.
StatusOr<std::vector<int>> CurrentAffinity();

// One rank's use of its host, all-gathered when a buffer is set up to decide whether its waits may spin
// (BackoffPolicy::ForCpus): the kernel's boot id names the host (logical nodes split one host, and two
// guests of one machine are two hosts), the cpus the rank may run on, and its busy threads.
struct RankCpus {
  char host[40] = {};      // /proc/sys/kernel/random/boot_id; "" (unreadable): a host of its own
  uint64_t mask[16] = {};  // cpus 0..1023
  int32_t threads = 0;     // 0 when the affinity was unknown: counts neither threads nor cpus
};
RankCpus ThisRankCpus(int threads);
// True when the threads of the ranks on all[me]'s host outnumber the cpus those ranks may run on (the
// union of their masks): some of them take turns on a cpu. Pure.
bool HostThreadsOutnumberCpus(std::span<const RankCpus> all, int me);

}  // namespace epx
