// EPX_NUMA_NODE, the launcher's choice of the heap's NUMA node (transport/heap.cc): strict. Before,
// atoi read junk, an empty value or an overflow as node 0 and bound the heap there without a word.
#include <gtest/gtest.h>
#include <numa.h>
#include <stdlib.h>

#include <string>

#include "transport/heap.h"

namespace epx {
namespace {

class NumaNodeEnv : public ::testing::Test {
 protected:
  void SetUp() override {
    if (numa_available() < 0) GTEST_SKIP() << "libnuma reports no NUMA support on this kernel";
    if (const char* v = std::getenv("EPX_NUMA_NODE")) saved_ = v;
  }
  void TearDown() override {
    if (saved_)
      ::setenv("EPX_NUMA_NODE", saved_->c_str(), 1);
    else
      ::unsetenv("EPX_NUMA_NODE");
  }
  static StatusOr<std::unique_ptr<SymmetricHeap>> Heap(const char* value) {
    ::setenv("EPX_NUMA_NODE", value, 1);
    HeapOptions o;
    o.size = 1 << 20;
    o.hugepages = "off";
    o.numa_bind = true;
    return SymmetricHeap::Create(o, 0, 1);
  }

 private:
  std::optional<std::string> saved_;
};

TEST_F(NumaNodeEnv, JunkIsAnErrorNamingTheVariableAndValue) {
  const std::string max = std::to_string(numa_max_node());
  for (const char* bad :
       {"x", "1O", "", " ", "0x1", "1.5", "-2", "99999999999999999999", "2147483648", "--1"}) {
    auto h = Heap(bad);
    ASSERT_FALSE(h.ok()) << "'" << bad << "' accepted";
    EXPECT_EQ(h.status().code(), Code::kInvalidArgument) << h.status().ToString();
    EXPECT_NE(h.status().message().find("EPX_NUMA_NODE='" + std::string(bad) + "'"), std::string::npos)
        << h.status().ToString();
    EXPECT_NE(h.status().message().find("-1.." + max), std::string::npos) << h.status().ToString();
  }
  auto h = Heap(std::to_string(numa_max_node() + 1).c_str());
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.status().message().find("EPX_NUMA_NODE"), std::string::npos) << h.status().ToString();
}

TEST_F(NumaNodeEnv, MinusOneAndExistingNodesAreAccepted) {
  auto any = Heap("-1");
  ASSERT_TRUE(any.ok()) << any.status().ToString();
  EXPECT_GE((*any)->numa_node(), 0);
  for (int n = 0; n <= numa_max_node(); ++n) {
    if (!numa_bitmask_isbitset(numa_nodes_ptr, n)) continue;
    auto h = Heap((" " + std::to_string(n) + " ").c_str());  // blanks around it, as the tunables allow
    ASSERT_TRUE(h.ok()) << n << ": " << h.status().ToString();
    EXPECT_EQ((*h)->numa_node(), n);
  }
}

}  // namespace
}  // namespace epx
