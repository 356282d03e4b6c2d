// tools/epx-run/epx_run.cc: the epx launcher. Starts this host's share of an R-rank job as pinned
// rank processes with the EPX_* placement environment, multiplexes their output with "[r<rank>] "
// prefixes and supervises them (first failure, signals, timeout); see process_group.h.
//
//   epx-run -n R [--nodes N] [--nnodes M --node-rank i --master HOST:PORT] [--no-bind] [--timeout S]
//           [--grace S] [--respawn K] [--print-config] [--tag-output|--no-tag] -- PROGRAM ARGS...
//
// Rank model (transport/placement.h): N logical nodes of L = R/N ranks, rank = node*L + local. The
// M hosts split the ranks evenly: host i starts ranks [i*R/M, (i+1)*R/M) (so N must be a multiple of
// M and every host holds whole logical nodes).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/log.h"
#include "core/sys.h"
#include "core/tunables.h"
#include "tools/epx-run/process_group.h"
#include "transport/host_topology.h"

extern char** environ;

namespace epx::run {
namespace {

// The variables epx-run owns in each rank's environment (inherited values are replaced).
constexpr const char* kContractVars[] = {
    "EPX_RANK",   "EPX_WORLD_SIZE", "EPX_LOCAL_RANK", "EPX_LOCAL_SIZE", "EPX_MASTER_ADDR",  "EPX_MASTER_PORT",
    "EPX_JOB_ID", "EPX_LAUNCHER",   "EPX_NUMA_NODE",  "EPX_CPUS",       "EPX_RESTART_COUNT"};

struct Args {
  int np = 0;
  int nodes = 0;  // 0: same as nnodes
  int nnodes = 1;
  int node_rank = 0;
  std::string master;
  bool no_bind = false;
  double timeout_s = 0;
  double grace_s = 0;
  int respawn = 0;
  bool print_config = false;
  bool tag = true;
  std::vector<std::string> command;
};

struct Layout {
  int world = 0, nodes = 0, local_size = 0;  // R, N, L
  int hosts = 1, host = 0;                   // M, i
  int first_rank = 0, host_ranks = 0;        // this host starts [first_rank, first_rank + host_ranks)
  std::string master_addr = "127.0.0.1";
  int master_port = 0;  // 0: pick a free one at launch
};

// Checks what CLI11 cannot express; throws CLI::ValidationError with a message naming the options.
Layout Validate(Args& a) {
  using CLI::ValidationError;
  if (a.np < 1) throw ValidationError("-n", fmt::format("must be at least 1 rank (got {})", a.np));
  if (a.nnodes < 1)
    throw ValidationError("--nnodes", fmt::format("must be at least 1 host (got {})", a.nnodes));
  if (a.node_rank < 0 || a.node_rank >= a.nnodes)
    throw ValidationError("--node-rank",
                          fmt::format("{} is not in [0, {}) (--nnodes {})", a.node_rank, a.nnodes, a.nnodes));
  if (a.nodes == 0) a.nodes = a.nnodes;
  if (a.nodes < 1) throw ValidationError("--nodes", fmt::format("must be at least 1 (got {})", a.nodes));
  if (a.nodes % a.nnodes != 0)
    throw ValidationError(
        "--nodes",
        fmt::format("{} logical nodes do not split evenly over --nnodes {} hosts", a.nodes, a.nnodes));
  if (a.np % a.nodes != 0)
    throw ValidationError(
        "-n", fmt::format("{} ranks do not split evenly over --nodes {} logical nodes", a.np, a.nodes));
  if (a.nnodes > 1 && a.master.empty())
    throw ValidationError("--master", "is required with --nnodes > 1 (HOST:PORT of the host running rank 0)");
  if (a.timeout_s < 0) throw ValidationError("--timeout", "must not be negative");
  if (!(a.grace_s >= 0 && a.grace_s <= 86400))
    throw ValidationError("--grace", fmt::format("{} is not a number of seconds in [0, 86400]", a.grace_s));
  if (a.respawn < 0 || a.respawn > 1000)
    throw ValidationError("--respawn", fmt::format("{} is not a number of restarts in [0, 1000]", a.respawn));
  if (a.command.empty() && !a.print_config)
    throw ValidationError("PROGRAM", "missing: usage is epx-run -n R [options] -- PROGRAM [ARGS...]");

  Layout l;
  l.world = a.np;
  l.nodes = a.nodes;
  l.local_size = a.np / a.nodes;
  l.hosts = a.nnodes;
  l.host = a.node_rank;
  l.host_ranks = a.np / a.nnodes;
  l.first_rank = l.host * l.host_ranks;
  if (!a.master.empty()) {
    // HOST:PORT, or [IPv6]:PORT.
    std::string_view m = a.master;
    size_t colon = m.rfind(':');
    std::string_view host = colon == std::string_view::npos ? std::string_view() : m.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    int port = 0;
    std::string port_text =
        colon == std::string_view::npos ? std::string() : std::string(m.substr(colon + 1));
    char* end = nullptr;
    long p = std::strtol(port_text.c_str(), &end, 10);
    if (host.empty() || port_text.empty() || *end != '\0' || p < 1 || p > 65535)
      throw ValidationError("--master",
                            fmt::format("'{}' is not HOST:PORT with a port in 1..65535", a.master));
    port = static_cast<int>(p);
    l.master_addr = std::string(host);
    l.master_port = port;
  }
  return l;
}

// A port that was free a moment ago on the loopback interface; rank 0 listens on it. The window
// between our close and rank 0's bind is the usual (accepted) race of every launcher that does this.
StatusOr<int> PickFreePort() {
  EPX_SYS(fd, ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  Status st = ::bind(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0
                  ? Status::Ok()
                  : SysError("bind(127.0.0.1:0)", errno);
  if (st.ok() && ::getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    st = SysError("getsockname", errno);
  ::close(static_cast<int>(fd));
  if (!st.ok()) return st;
  return static_cast<int>(ntohs(addr.sin_port));
}

uint64_t Mix(uint64_t x) {  // splitmix64 finaliser
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Same on every rank of the job, different between jobs; it names sockets and shm objects, so only
// [0-9a-f]. Multi-host jobs have no channel to agree on a random id before the ranks start, so they
// derive it from the master endpoint (EPX_JOB_ID in the launcher's env overrides that, e.g. a
// scheduler's job id, unless we are ourselves inside an epx-run rank, where it is the outer job's).
std::string MakeJobId(const Args& a) {
  const char* env = std::getenv("EPX_JOB_ID");
  if (env != nullptr && *env != '\0' && std::getenv("EPX_LAUNCHER") == nullptr) return env;
  if (a.nnodes > 1) {
    uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a
    for (unsigned char c : a.master) h = (h ^ c) * 0x100000001b3ULL;
    return fmt::format("{:016x}", Mix(h));
  }
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t t = static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
  return fmt::format("{:016x}", Mix(t ^ (static_cast<uint64_t>(::getpid()) << 40)));
}

std::vector<std::string> RankEnv(const Layout& l, int rank, const std::string& job_id, const RankPin* pin,
                                 const std::vector<int>& unbound_cpus) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view kv(*e);
    std::string_view key = kv.substr(0, kv.find('='));
    bool ours = false;
    for (const char* v : kContractVars) ours = ours || key == v;
    if (!ours) env.emplace_back(kv);
  }
  auto set = [&](const char* k, const auto& v) { env.push_back(fmt::format("{}={}", k, v)); };
  set("EPX_RANK", rank);
  set("EPX_WORLD_SIZE", l.world);
  set("EPX_LOCAL_RANK", rank % l.local_size);
  set("EPX_LOCAL_SIZE", l.local_size);
  set("EPX_MASTER_ADDR", l.master_addr);
  set("EPX_MASTER_PORT", l.master_port);
  set("EPX_JOB_ID", job_id);
  set("EPX_LAUNCHER", "epx-run");
  set("EPX_NUMA_NODE", pin != nullptr ? pin->numa_node : -1);
  set("EPX_CPUS", FormatCpuList(pin != nullptr ? pin->cpus : unbound_cpus, /*ranges=*/false));
  set("EPX_RESTART_COUNT", 0);  // the supervisor counts it up when it restarts the rank (--respawn)
  return env;
}

void PrintConfig(const Layout& l, const Args& a, const HostTopology* topo, const PinPlan& plan) {
  std::string out = "== tunables (EPX_* environment) ==\n" + FormatTunables();
  out += "== placement ==\n";
  out +=
      fmt::format("world {} ranks = {} logical node{} x {} local ranks; host {} of {} starts ranks {}-{}\n",
                  l.world, l.nodes, l.nodes == 1 ? "" : "s", l.local_size, l.host, l.hosts, l.first_rank,
                  l.first_rank + l.host_ranks - 1);
  out +=
      fmt::format("master {}:{}; job id {}\n", l.master_addr,
                  l.master_port != 0 ? std::to_string(l.master_port) : std::string("(free port at launch)"),
                  a.nnodes > 1 ? "derived from --master" : "new per launch");
  if (topo != nullptr) out += fmt::format("host: {}\n", topo->ToString());
  if (a.no_bind) {
    out += "binding: off (--no-bind): ranks inherit the launcher's cpus\n";
  } else {
    if (plan.oversubscribed) out += plan.OversubscriptionNote() + "\n";
    out += fmt::format("{:>6} {:>5} {:>6} {:>5}  {}\n", "rank", "node", "local", "numa", "cpus");
    for (int i = 0; i < l.host_ranks; ++i) {
      const int rank = l.first_rank + i;
      const RankPin& p = plan.ranks[i];
      out += fmt::format("{:>6} {:>5} {:>6} {:>5}  {}\n", rank, rank / l.local_size, rank % l.local_size,
                         p.numa_node, FormatCpuList(p.cpus));
    }
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
}

// Ranks get our fds 0-2 (via /dev/null or pipes) and pipes must never land on them: make sure they
// are open even if our parent closed them.
void EnsureStdFds() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) != -1) continue;
    int n = ::open("/dev/null", O_RDWR);
    if (n >= 0 && n != fd) ::dup2(n, fd), ::close(n);
  }
}

int Main(int argc, char** argv) {
  EnsureStdFds();
  CLI::App app{"epx-run: start an epx job's ranks on this host, pinned, with the EPX_* environment"};
  Args a;
  app.add_option("-n,--np", a.np, "total number of ranks R (whole job, all hosts)");
  app.add_option("--nodes", a.nodes, "logical nodes N in the job (default: --nnodes); L = R/N ranks each");
  app.add_option("--nnodes", a.nnodes, "hosts M running this job (one epx-run each)");
  app.add_option("--node-rank", a.node_rank,
                 "this host's index i in [0, M): starts ranks [i*R/M, (i+1)*R/M)");
  app.add_option("--master", a.master, "HOST:PORT where rank 0 listens (required with --nnodes > 1)");
  app.add_flag("--no-bind", a.no_bind, "do not pin ranks to cores and NUMA nodes");
  app.add_option("--timeout", a.timeout_s, "kill the job after S seconds (exit code 124); 0: none");
  app.add_option("--grace", a.grace_s,
                 "when a rank fails, let the others run up to S seconds (to detect and report it themselves) "
                 "before terminating them; 0 (default): terminate them at once. Applies to a failure that "
                 "is the job's (no --respawn restart left), never to a rank that is restarted");
  app.add_option(
      "--respawn", a.respawn,
      "restart a rank that fails (killed by a signal or non-zero exit) up to K times per rank, at "
      "once, as the same rank with the same environment and pinning plus EPX_RESTART_COUNT=k; such "
      "a failure is not the job's (the others run on); the job exits 0 when every rank's last "
      "process exited 0. 0 (default): never");
  app.add_flag("--print-config", a.print_config, "print tunables and the placement plan, then exit");
  app.add_flag("--tag-output,!--no-tag", a.tag, "prefix output lines with [r<rank>] (default on)");
  app.add_option("command", a.command, "PROGRAM [ARGS...] (after --)")->expected(-1);
  app.footer(
      "Each rank gets EPX_RANK EPX_WORLD_SIZE EPX_LOCAL_RANK EPX_LOCAL_SIZE EPX_MASTER_ADDR EPX_MASTER_PORT\n"
      "EPX_JOB_ID EPX_LAUNCHER=epx-run EPX_NUMA_NODE EPX_CPUS EPX_RESTART_COUNT (0, or k in the k-th\n"
      "restart of a rank with --respawn). Exit code: 0, the first failing rank's code (128+signal if\n"
      "killed; the last line names it, and any restarts), 124 on --timeout, 128+signal if epx-run itself\n"
      "was interrupted.");
  Layout l;
  try {
    app.parse(argc, argv);
    l = Validate(a);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  if (Status s = ValidateTunableEnv(); !s.ok()) {
    fmt::print(stderr, "epx-run: {}\n", s.message());
    return 2;
  }

  std::optional<HostTopology> topo;
  PinPlan plan;
  std::vector<int> unbound_cpus;
  if (!a.no_bind) {
    auto t = HostTopology::Discover();
    if (!t.ok()) {
      fmt::print(stderr, "epx-run: cannot read the host topology: {} (use --no-bind to skip pinning)\n",
                 t.status().message());
      return 1;
    }
    topo = std::move(t).value();
    plan = PlanPinning(*topo, l.host_ranks);
    if (static_cast<int>(plan.ranks.size()) != l.host_ranks) {
      fmt::print(stderr, "epx-run: no cpus to pin to ({}); use --no-bind\n", topo->ToString());
      return 1;
    }
  } else if (auto c = CurrentAffinity(); c.ok()) {
    unbound_cpus = std::move(c).value();
  }

  if (a.print_config) {
    PrintConfig(l, a, topo ? &*topo : nullptr, plan);
    return 0;
  }

  if (l.master_port == 0) {
    auto port = PickFreePort();
    if (!port.ok()) {
      fmt::print(stderr, "epx-run: cannot pick a master port: {}\n", port.status().message());
      return 1;
    }
    l.master_port = *port;
  }
  const std::string job_id = MakeJobId(a);
  if (!a.no_bind && plan.oversubscribed) fmt::print(stderr, "{}\n", plan.OversubscriptionNote());

  SupervisorOptions opts;
  opts.tag_output = a.tag;
  if (a.timeout_s > 0)
    opts.timeout = std::chrono::milliseconds(static_cast<int64_t>(a.timeout_s * 1000.0 + 0.5));
  opts.failure_grace = std::chrono::milliseconds(static_cast<int64_t>(a.grace_s * 1000.0 + 0.5));
  opts.respawn = a.respawn;
  auto sup = Supervisor::Create(opts);
  if (!sup.ok()) {
    fmt::print(stderr, "epx-run: {}\n", sup.status().message());
    return 1;
  }
  for (int i = 0; i < l.host_ranks; ++i) {
    RankLaunch launch;
    launch.rank = l.first_rank + i;
    if (!a.no_bind) launch.pin = plan.ranks[i];
    launch.env = RankEnv(l, launch.rank, job_id, launch.pin ? &*launch.pin : nullptr, unbound_cpus);
    if (Status s = (*sup)->Spawn(launch, a.command); !s.ok()) {
      (*sup)->KillAll();
      fmt::print(stderr, "epx-run: {}\n", s.message());
      return s.code() == Code::kNotFound ? 127 : 1;
    }
  }
  return (*sup)->Run();
}

}  // namespace
}  // namespace epx::run

int main(int argc, char** argv) {
  return epx::run::Main(argc, argv);
}
