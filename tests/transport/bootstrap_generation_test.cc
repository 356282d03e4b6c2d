// Bootstrap generations (transport/bootstrap.h "Generations"): a job forms its bootstrap again on the same
// master port when a restarted rank re-joins, and a stale process (an older incarnation, or one that
// missed a formation) is refused instead of mixed in. In-process: ranks are threads (the bootstrap keys
// its memory of joined generations by job and rank), and stale or hand-made peers are raw sockets that
// speak the wire protocol (transport/bootstrap_wire.h) themselves.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <future>
#include <string>
#include <thread>

#include "tests/support/subprocess.h"
#include "transport/bootstrap.h"
#include "transport/bootstrap_wire.h"

namespace epx {
namespace {

using namespace std::chrono_literals;
using namespace bootstrap_wire;

Placement Rank(int rank, int world, int port, const std::string& job) {
  Placement p;
  p.rank = rank;
  p.world_size = world;
  p.local_size = world;
  p.master_port = port;
  p.job_id = job;
  return p;
}

std::future<StatusOr<std::unique_ptr<Bootstrap>>> Start(const Placement& p,
                                                        std::chrono::milliseconds timeout) {
  return std::async(std::launch::async, [p, timeout] { return Bootstrap::Create(p, timeout); });
}

// What a hand-made peer got back from the root: the reply's code, and the generation (OK) or error text.
struct Reply {
  uint32_t code = ~0u;
  uint64_t generation = 0;
  std::string text;
};

// A peer that speaks the protocol by hand: connects (retrying while the root is not listening yet), sends
// `hello` and waits up to 10 s for the root's answer. Keeps the socket open (as a joined rank would).
class RawPeer {
 public:
  RawPeer(int port, const Hello& hello) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const auto end = std::chrono::steady_clock::now() + 10s;
    for (;;) {
      fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) break;
      ::close(fd_);
      fd_ = -1;
      if (std::chrono::steady_clock::now() > end) return;
      std::this_thread::sleep_for(5ms);
    }
    sent_ = ::send(fd_, &hello, sizeof(hello), MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof(hello));
  }
  ~RawPeer() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool connected() const { return fd_ >= 0 && sent_; }

  Reply Read() {
    Reply r;
    ReplyHeader h{};
    if (!ReadAll(&h, sizeof(h)) || h.magic != kMagic) return r;
    r.code = h.code;
    if (h.code == 0 && h.len == sizeof(r.generation)) {
      ReadAll(&r.generation, sizeof(r.generation));
    } else if (h.len < 4096) {
      r.text.resize(h.len);
      ReadAll(r.text.data(), r.text.size());
    }
    return r;
  }

 private:
  bool ReadAll(void* buf, size_t n) {
    auto* p = static_cast<uint8_t*>(buf);
    while (n > 0) {
      pollfd pf{fd_, POLLIN, 0};
      if (::poll(&pf, 1, 10000) <= 0) return false;
      const ssize_t k = ::recv(fd_, p, n, 0);
      if (k <= 0) return false;
      p += k, n -= static_cast<size_t>(k);
    }
    return true;
  }
  int fd_ = -1;
  bool sent_ = false;
};

Hello HelloOf(int rank, int world, const std::string& job, uint64_t generation) {
  return Hello{kMagic, kVersion, rank, world, JobHash(job), generation};
}

// Both ranks of a 2-rank job form generation g on `port`.
void Form(int port, const std::string& job, uint64_t g) {
  auto root = Start(Rank(0, 2, port, job), 10s);
  auto peer = Start(Rank(1, 2, port, job), 10s);
  auto b0 = root.get(), b1 = peer.get();
  ASSERT_TRUE(b0.ok()) << b0.status().ToString();
  ASSERT_TRUE(b1.ok()) << b1.status().ToString();
  EXPECT_EQ((*b0)->generation(), g);
  EXPECT_EQ((*b1)->generation(), g);
}

std::string Job(const char* name) {
  return fmt::format("{}-{}", name, ::getpid());
}

TEST(BootstrapGeneration, ReformingOnTheSamePortCountsGenerations) {
  const int port = test::FreePort();
  const std::string job = Job("gen-count");
  Form(port, job, 1);
  Form(port, job, 2);  // the same master port again: the first root stopped listening
  Form(port, job, 3);
}

TEST(BootstrapGeneration, TheRootStopsListeningOnceEveryoneJoined) {
  const int port = test::FreePort();
  const std::string job = Job("gen-closed");
  auto root = Start(Rank(0, 2, port, job), 10s);
  auto peer = Start(Rank(1, 2, port, job), 10s);
  auto b0 = root.get(), b1 = peer.get();
  ASSERT_TRUE(b0.ok() && b1.ok());
  // A process that comes while this generation runs is refused by the kernel (and retries), not parked in
  // a backlog nobody accepts from.
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_NE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  EXPECT_EQ(errno, ECONNREFUSED);
  ::close(fd);
}

TEST(BootstrapGeneration, StaleHelloIsRefusedAndTheRankMayStillCome) {
  const int port = test::FreePort();
  const std::string job = Job("gen-stale");
  Form(port, job, 1);
  Form(port, job, 2);
  // Generation 3 forms; an old incarnation of rank 1 that last joined generation 1 asks for 2.
  auto root = Start(Rank(0, 2, port, job), 10s);
  RawPeer stale(port, HelloOf(1, 2, job, 2));
  ASSERT_TRUE(stale.connected());
  const Reply r = stale.Read();
  EXPECT_EQ(r.code, static_cast<uint32_t>(Code::kFailedPrecondition)) << r.text;
  EXPECT_NE(
      r.text.find("refused rank 1: it asks to join generation 2 of this job (it last joined generation 1) "
                  "but generation 3 is forming: the process is stale"),
      std::string::npos)
      << r.text;
  // The current incarnation of rank 1 joins the same formation.
  auto b1 = Bootstrap::Create(Rank(1, 2, port, job), 10s);
  auto b0 = root.get();
  ASSERT_TRUE(b0.ok()) << b0.status().ToString();
  ASSERT_TRUE(b1.ok()) << b1.status().ToString();
  EXPECT_EQ((*b0)->generation(), 3u);
  EXPECT_EQ((*b1)->generation(), 3u);
}

TEST(BootstrapGeneration, FreshRankJoinsWhateverForms) {
  const int port = test::FreePort();
  const std::string job = Job("gen-fresh");
  Form(port, job, 1);
  auto root = Start(Rank(0, 2, port, job), 10s);
  RawPeer restarted(port, HelloOf(1, 2, job, 0));  // a restarted process knows no generation
  auto b0 = root.get();
  ASSERT_TRUE(b0.ok()) << b0.status().ToString();
  const Reply r = restarted.Read();
  EXPECT_EQ(r.code, 0u) << r.text;
  EXPECT_EQ(r.generation, 2u);
}

TEST(BootstrapGeneration, FreshRootTakesTheNewestAndRefusesOlderRanks) {
  const int port = test::FreePort();
  const std::string job = Job("gen-fresh-root");  // rank 0 of this job never joined: a restarted root
  auto root = Start(Rank(0, 3, port, job), 10s);
  RawPeer older(port, HelloOf(2, 3, job, 4));  // let in first: the root takes generation 4 from it
  ASSERT_TRUE(older.connected());
  std::this_thread::sleep_for(300ms);  // (no reply before everyone is there, so the order is by time)
  RawPeer newer(port, HelloOf(1, 3, job, 6));
  const Reply ro = older.Read();
  EXPECT_EQ(ro.code, static_cast<uint32_t>(Code::kFailedPrecondition)) << ro.text;
  EXPECT_NE(ro.text.find("refused rank 2: it asks to join generation 4"), std::string::npos) << ro.text;
  RawPeer fresh(port, HelloOf(2, 3, job, 0));  // rank 2's restarted incarnation
  auto b0 = root.get();
  ASSERT_TRUE(b0.ok()) << b0.status().ToString();
  EXPECT_EQ((*b0)->generation(), 6u);
  for (RawPeer* p : {&newer, &fresh}) {
    const Reply r = p->Read();
    EXPECT_EQ(r.code, 0u) << r.text;
    EXPECT_EQ(r.generation, 6u);
  }
}

TEST(BootstrapGeneration, AStaleRootFailsTheFormation) {
  const int port = test::FreePort();
  const std::string job = Job("gen-stale-root");
  Form(port, job, 1);  // rank 0 (this process) last joined generation 1: it forms 2
  auto root = Start(Rank(0, 2, port, job), 10s);
  RawPeer ahead(port, HelloOf(1, 2, job, 5));
  auto b0 = root.get();
  ASSERT_FALSE(b0.ok());
  EXPECT_EQ(b0.status().code(), Code::kFailedPrecondition);
  EXPECT_NE(b0.status().message().find("the root process is stale"), std::string::npos)
      << b0.status().message();
  const Reply r = ahead.Read();
  EXPECT_EQ(r.code, static_cast<uint32_t>(Code::kFailedPrecondition));
  EXPECT_NE(r.text.find("asks to join generation 5"), std::string::npos) << r.text;
}

TEST(BootstrapGeneration, TheTimeoutNamesTheRefusal) {
  const int port = test::FreePort();
  const std::string job = Job("gen-timeout");
  Form(port, job, 1);
  Form(port, job, 2);
  auto root = Start(Rank(0, 2, port, job), 1500ms);
  RawPeer stale(port, HelloOf(1, 2, job, 2));  // missed generation 2
  auto b0 = root.get();
  ASSERT_FALSE(b0.ok());
  EXPECT_EQ(b0.status().code(), Code::kTimeout);
  EXPECT_NE(
      b0.status().message().find("ranks 1 did not arrive within 1500 ms; bootstrap root refused rank 1"),
      std::string::npos)
      << b0.status().message();
}

}  // namespace
}  // namespace epx
