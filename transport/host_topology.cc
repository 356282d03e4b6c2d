#include "transport/host_topology.h"

#include <hwloc.h>
#include <numaif.h>
#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>

#include "core/sys.h"

namespace epx {
namespace {

struct TopologyCloser {
  void operator()(hwloc_topology* t) const { hwloc_topology_destroy(t); }
};
using TopologyPtr = std::unique_ptr<hwloc_topology, TopologyCloser>;

// init + optional configuration + load; hwloc reports failures through errno.
template <typename Configure>
StatusOr<TopologyPtr> LoadTopology(Configure&& configure) {
  hwloc_topology_t raw = nullptr;
  if (hwloc_topology_init(&raw) != 0) return SysError("hwloc_topology_init", errno);
  TopologyPtr topo(raw);
  EPX_RETURN_IF_ERROR(configure(topo.get()));
  if (hwloc_topology_load(topo.get()) != 0) return SysError("hwloc_topology_load", errno);
  return topo;
}

// The NUMA node a PU belongs to. A PU can lie in the cpuset of several nodes (KNL MCDRAM, CXL or
// HBM nodes attached at package level); the node with the smallest cpuset is its local DRAM.
int OwnerNode(hwloc_topology_t t, unsigned pu_os) {
  int best = -1, best_weight = 0;
  for (hwloc_obj_t n = hwloc_get_next_obj_by_type(t, HWLOC_OBJ_NUMANODE, nullptr); n != nullptr;
       n = hwloc_get_next_obj_by_type(t, HWLOC_OBJ_NUMANODE, n)) {
    if (n->cpuset == nullptr || !hwloc_bitmap_isset(n->cpuset, pu_os)) continue;
    int w = hwloc_bitmap_weight(n->cpuset);
    if (best < 0 || w < best_weight) best = static_cast<int>(n->os_index), best_weight = w;
  }
  return best;
}

StatusOr<HostTopology> FromHwloc(hwloc_topology_t t) {
  HostTopology topo;
  std::map<int, size_t> node_slot;  // os index -> index in topo.numa_nodes
  for (hwloc_obj_t n = hwloc_get_next_obj_by_type(t, HWLOC_OBJ_NUMANODE, nullptr); n != nullptr;
       n = hwloc_get_next_obj_by_type(t, HWLOC_OBJ_NUMANODE, n)) {
    TopoNumaNode node;
    node.os_index = static_cast<int>(n->os_index);
    node.memory_bytes = n->attr != nullptr ? n->attr->numanode.local_memory : 0;
    node_slot[node.os_index] = topo.numa_nodes.size();
    topo.numa_nodes.push_back(std::move(node));
  }
  // Group PUs by their core; a platform that reports no Core objects gets one core per PU.
  std::map<const void*, size_t> core_slot;
  for (hwloc_obj_t pu = hwloc_get_next_obj_by_type(t, HWLOC_OBJ_PU, nullptr); pu != nullptr;
       pu = hwloc_get_next_obj_by_type(t, HWLOC_OBJ_PU, pu)) {
    hwloc_obj_t core = hwloc_get_ancestor_obj_by_type(t, HWLOC_OBJ_CORE, pu);
    const void* key = core != nullptr ? static_cast<const void*>(core) : static_cast<const void*>(pu);
    auto [it, inserted] = core_slot.try_emplace(key, topo.cores.size());
    if (inserted) {
      TopoCore c;
      c.numa_node = OwnerNode(t, pu->os_index);
      topo.cores.push_back(std::move(c));
      if (auto s = node_slot.find(topo.cores.back().numa_node); s != node_slot.end())
        topo.numa_nodes[s->second].cores.push_back(static_cast<int>(it->second));
    }
    TopoCore& c = topo.cores[it->second];
    c.pus.push_back(static_cast<int>(pu->os_index));
    if (auto s = node_slot.find(c.numa_node); s != node_slot.end())
      topo.numa_nodes[s->second].cpus.push_back(static_cast<int>(pu->os_index));
  }
  for (auto& c : topo.cores) std::sort(c.pus.begin(), c.pus.end());
  for (auto& n : topo.numa_nodes) std::sort(n.cpus.begin(), n.cpus.end());
  if (topo.cores.empty()) return EPX_ERROR(kNotFound, "hwloc found no processing units");
  return topo;
}

// Reads a small sysfs integer file; nullopt-like -2 when absent or unparsable.
int ReadSysfsInt(const std::string& path) {
  std::ifstream f(path);
  int v = 0;
  if (!(f >> v)) return -2;
  return v;
}

std::string ReadSysfsWord(const std::string& path) {
  std::ifstream f(path);
  std::string w;
  f >> w;
  return w;
}

int DeviceNumaNodeIn(hwloc_topology_t t, std::string_view name, int depth) {
  for (hwloc_obj_t d = hwloc_get_next_osdev(t, nullptr); d != nullptr; d = hwloc_get_next_osdev(t, d)) {
    if (d->name == nullptr || name != d->name) continue;
    hwloc_obj_t anc = hwloc_get_non_io_ancestor_obj(t, d);
    if (anc == nullptr || anc->nodeset == nullptr || hwloc_bitmap_weight(anc->nodeset) != 1) return -1;
    return hwloc_bitmap_first(anc->nodeset);
  }
  // Not a PCI-backed OS device hwloc knows. Soft-RoCE (rxe0) and siw devices name their netdev in
  // sysfs "parent"; other devices may still carry a numa_node attribute of their own.
  const std::string n(name);
  for (const char* cls : {"/sys/class/infiniband/", "/sys/class/net/"}) {
    int v = ReadSysfsInt(cls + n + "/device/numa_node");
    if (v >= 0) return v;
  }
  if (depth == 0) {
    std::string parent = ReadSysfsWord("/sys/class/infiniband/" + n + "/parent");
    if (!parent.empty() && parent != n) return DeviceNumaNodeIn(t, parent, depth + 1);
  }
  return -1;
}

}  // namespace

int HostTopology::NumPus() const {
  int n = 0;
  for (const auto& c : cores) n += static_cast<int>(c.pus.size());
  return n;
}

std::string HostTopology::ToString() const {
  std::string out = fmt::format("{} NUMA node{}, {} cores, {} PUs", numa_nodes.size(),
                                numa_nodes.size() == 1 ? "" : "s", cores.size(), NumPus());
  const char* sep = ": ";
  for (const auto& n : numa_nodes) {
    out += fmt::format("{}node {} cpus {} ({} MiB)", sep, n.os_index,
                       n.cpus.empty() ? "none" : FormatCpuList(n.cpus), n.memory_bytes >> 20);
    sep = ", ";
  }
  return out;
}

StatusOr<HostTopology> HostTopology::Discover() {
  // Default hwloc flags drop disallowed PUs/nodes (cgroup cpusets), which is exactly what we plan over.
  EPX_ASSIGN_OR_RETURN(TopologyPtr t, LoadTopology([](hwloc_topology_t) { return Status::Ok(); }));
  return FromHwloc(t.get());
}

StatusOr<HostTopology> HostTopology::FromSynthetic(std::string_view description) {
  std::string desc(description);
  EPX_ASSIGN_OR_RETURN(TopologyPtr t, LoadTopology([&](hwloc_topology_t raw) -> Status {
                         if (hwloc_topology_set_synthetic(raw, desc.c_str()) != 0)
                           return EPX_ERROR(kInvalidArgument, "bad synthetic topology '{}'", desc);
                         return Status::Ok();
                       }));
  return FromHwloc(t.get());
}

int DeviceNumaNode(std::string_view device_name) {
  if (device_name.empty() || device_name.find('/') != std::string_view::npos || device_name == "." ||
      device_name == "..")
    return -1;
  auto t = LoadTopology([](hwloc_topology_t raw) -> Status {
    // OS devices are filtered out by default; "important" keeps network/OpenFabrics devices and their
    // PCI bridges without enumerating every PCI function.
    hwloc_topology_set_io_types_filter(raw, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    return Status::Ok();
  });
  if (!t.ok()) return -1;
  return DeviceNumaNodeIn(t->get(), device_name, 0);
}

std::string PinPlan::OversubscriptionNote() const {
  if (!oversubscribed) return "";
  return fmt::format("epx-run: {} ranks on {} cores: sharing cores round-robin", ranks.size(), cores);
}

PinPlan PlanPinning(const HostTopology& topo, int ranks_on_host) {
  PinPlan plan;
  // Only nodes with cpus take ranks; memory-only nodes are never a rank's home.
  std::vector<const TopoNumaNode*> nodes;
  std::vector<int> node_start;  // first global core index of each node
  int total = 0;
  for (const auto& n : topo.numa_nodes) {
    if (n.cores.empty()) continue;
    nodes.push_back(&n);
    node_start.push_back(total);
    total += static_cast<int>(n.cores.size());
  }
  if (ranks_on_host <= 0 || total == 0) return plan;
  plan.cores = total;
  plan.oversubscribed = total < ranks_on_host;
  plan.ranks.resize(ranks_on_host);

  // Rank i's share of the host's cores starts at core floor(i*T/n) (cores numbered node by node);
  // its node is the one holding that core. Starts never decrease, so each node gets a contiguous
  // block of ranks, sized in proportion to its cores; with T >= n the starts are distinct, so no
  // node gets more ranks than it has cores.
  std::vector<std::vector<int>> node_ranks(nodes.size());
  size_t j = 0;
  for (int i = 0; i < ranks_on_host; ++i) {
    int start = static_cast<int>(static_cast<int64_t>(i) * total / ranks_on_host);
    while (j + 1 < nodes.size() && start >= node_start[j + 1]) ++j;
    node_ranks[j].push_back(i);
  }
  for (size_t k = 0; k < nodes.size(); ++k) {
    const auto& cores = nodes[k]->cores;
    const int c = static_cast<int>(cores.size());
    const int m = static_cast<int>(node_ranks[k].size());
    for (int q = 0; q < m; ++q) {
      RankPin& pin = plan.ranks[node_ranks[k][q]];
      pin.host_index = node_ranks[k][q];
      pin.numa_node = nodes[k]->os_index;
      // m <= c: disjoint runs of whole cores; m > c: core q mod c (round-robin sharing).
      int lo = m <= c ? static_cast<int>(static_cast<int64_t>(q) * c / m) : q % c;
      int hi = m <= c ? static_cast<int>(static_cast<int64_t>(q + 1) * c / m) : lo + 1;
      for (int x = lo; x < hi; ++x) {
        const auto& pus = topo.cores[cores[x]].pus;
        pin.cpus.insert(pin.cpus.end(), pus.begin(), pus.end());
      }
      std::sort(pin.cpus.begin(), pin.cpus.end());
    }
  }
  return plan;
}

Status ApplyPin(const RankPin& pin, bool* mempolicy_applied) {
  if (mempolicy_applied != nullptr) *mempolicy_applied = false;
  if (!pin.cpus.empty()) {
    const int max_cpu = *std::max_element(pin.cpus.begin(), pin.cpus.end());
    if (pin.cpus.front() < 0) return EPX_ERROR(kInvalidArgument, "negative cpu in pin");
    std::unique_ptr<cpu_set_t, void (*)(cpu_set_t*)> set(CPU_ALLOC(max_cpu + 1),
                                                         [](cpu_set_t* s) { CPU_FREE(s); });
    if (set == nullptr) return EPX_ERROR(kResource, "CPU_ALLOC({}) failed", max_cpu + 1);
    const size_t bytes = CPU_ALLOC_SIZE(max_cpu + 1);
    CPU_ZERO_S(bytes, set.get());
    for (int cpu : pin.cpus) CPU_SET_S(cpu, bytes, set.get());
    EPX_SYS(rc, ::sched_setaffinity(0, bytes, set.get()), "cpus {}", FormatCpuList(pin.cpus));
    (void)rc;
  }
  if (pin.numa_node >= 0) {
    constexpr int kBits = 8 * sizeof(unsigned long);
    std::vector<unsigned long> mask(pin.numa_node / kBits + 1, 0);
    mask[pin.numa_node / kBits] |= 1UL << (pin.numa_node % kBits);
    // The kernel reads maxnode-1 bits (a historical off-by-one libnuma also compensates for).
    long rc = ::set_mempolicy(MPOL_PREFERRED, mask.data(), mask.size() * kBits + 1);
    if (rc != 0) {
      if (errno == EPERM || errno == ENOSYS) return Status::Ok();
      return SysError("set_mempolicy(MPOL_PREFERRED)", errno, fmt::format("node {}", pin.numa_node));
    }
    if (mempolicy_applied != nullptr) *mempolicy_applied = true;
  }
  return Status::Ok();
}

std::string FormatCpuList(const std::vector<int>& cpus, bool ranges) {
  std::string out;
  for (size_t i = 0; i < cpus.size();) {
    size_t k = i;
    if (ranges)
      while (k + 1 < cpus.size() && cpus[k + 1] == cpus[k] + 1) ++k;
    if (!out.empty()) out += ',';
    out += k == i ? fmt::format("{}", cpus[i]) : fmt::format("{}-{}", cpus[i], cpus[k]);
    i = k + 1;
  }
  return out;
}

StatusOr<std::vector<int>> ParseCpuList(std::string_view text) {
  // CPU numbers stop where CurrentAffinity stops growing its mask: a larger one is a typo, and would
  // make "0-2147483647" allocate 8 GiB (and overflow the loop counter at INT_MAX).
  constexpr int kMaxCpu = (1 << 20) - 1;
  auto num = [&](std::string_view s, int& v) {
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    return ec == std::errc() && p == s.data() + s.size() && v >= 0;
  };
  std::vector<std::pair<int, int>> ranges;
  while (!text.empty()) {
    size_t comma = text.find(',');
    std::string_view item = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    size_t dash = item.find('-');
    int lo = 0, hi = 0;
    bool ok = dash == std::string_view::npos
                  ? num(item, lo) && num(item, hi)
                  : num(item.substr(0, dash), lo) && num(item.substr(dash + 1), hi);
    if (!ok || hi < lo) return EPX_ERROR(kInvalidArgument, "bad cpu list item '{}'", item);
    if (hi > kMaxCpu) return EPX_ERROR(kInvalidArgument, "cpu list item '{}': cpus end at {}", item, kMaxCpu);
    ranges.emplace_back(lo, hi);
  }
  // Merged in order of their starts, so overlapping ranges cost their union, not their sum.
  std::sort(ranges.begin(), ranges.end());
  std::vector<int> out;
  for (auto [lo, hi] : ranges)
    for (int c = out.empty() ? lo : std::max(lo, out.back() + 1); c <= hi; ++c) out.push_back(c);
  return out;
}

StatusOr<std::vector<int>> CurrentAffinity() {
  // The kernel's cpumask may exceed CPU_SETSIZE on big hosts: grow until it fits (EINVAL otherwise).
  for (int n = 1024;; n *= 2) {
    std::unique_ptr<cpu_set_t, void (*)(cpu_set_t*)> set(CPU_ALLOC(n), [](cpu_set_t* s) { CPU_FREE(s); });
    if (set == nullptr) return EPX_ERROR(kResource, "CPU_ALLOC({}) failed", n);
    const size_t bytes = CPU_ALLOC_SIZE(n);
    if (::sched_getaffinity(0, bytes, set.get()) != 0) {
      if (errno == EINVAL && n < (1 << 20)) continue;
      return SysError("sched_getaffinity", errno);
    }
    std::vector<int> cpus;
    for (int c = 0; c < n; ++c)
      if (CPU_ISSET_S(c, bytes, set.get())) cpus.push_back(c);
    return cpus;
  }
}

RankCpus ThisRankCpus(int threads) {
  RankCpus r;
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string id;
  if (f >> id) id.copy(r.host, sizeof(r.host) - 1);
  StatusOr<std::vector<int>> cpus = CurrentAffinity();
  if (!cpus.ok()) return r;  // unknown: this rank counts neither threads nor cpus
  for (int c : *cpus)
    if (c < 64 * static_cast<int>(std::size(r.mask))) r.mask[c / 64] |= uint64_t{1} << (c % 64);
  r.threads = threads;
  return r;
}

bool HostThreadsOutnumberCpus(std::span<const RankCpus> all, int me) {
  const RankCpus& mine = all[static_cast<size_t>(me)];
  const std::string_view host(mine.host, strnlen(mine.host, sizeof(mine.host)));
  uint64_t mask[std::size(RankCpus{}.mask)] = {};
  int64_t threads = 0;
  for (size_t r = 0; r < all.size(); ++r) {
    const std::string_view other(all[r].host, strnlen(all[r].host, sizeof(all[r].host)));
    if (static_cast<int>(r) != me && (host.empty() || other != host)) continue;  // another host
    threads += all[r].threads;
    for (size_t w = 0; w < std::size(mask); ++w) mask[w] |= all[r].mask[w];
  }
  int64_t cpus = 0;
  for (uint64_t w : mask) cpus += __builtin_popcountll(w);
  return threads > cpus;
}

}  // namespace epx
