#include "transport/placement.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

namespace epx {
namespace {

StatusOr<Placement> From(std::map<std::string, std::string> env) {
  return PlacementFromEnv([env = std::move(env)](const char* n) -> const char* {
    auto it = env.find(n);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

TEST(Placement, SingleProcessWithoutLauncher) {
  auto p = From({});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->rank, 0);
  EXPECT_EQ(p->world_size, 1);
  EXPECT_EQ(p->launcher, "single");
  EXPECT_EQ(p->master_addr, "127.0.0.1");
}

TEST(Placement, EpxRun) {
  auto p = From({{"EPX_RANK", "5"}, {"EPX_WORLD_SIZE", "8"}, {"EPX_LOCAL_RANK", "1"}, {"EPX_LOCAL_SIZE", "4"},
                 {"EPX_MASTER_ADDR", "127.0.0.1"}, {"EPX_MASTER_PORT", "4000"}, {"EPX_JOB_ID", "j1"}});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->launcher, "epx-run");
  EXPECT_EQ(p->node, 1);
  EXPECT_EQ(p->num_nodes, 2);
  EXPECT_EQ(p->local_rank, 1);
  EXPECT_EQ(p->master_port, 4000);
  EXPECT_EQ(p->job_id, "j1");
  EXPECT_EQ(p->RankOf(1, 1), 5);
  EXPECT_EQ(p->restart_count, 0);  // no EPX_RESTART_COUNT: the first incarnation
}

TEST(Placement, Torchrun) {
  auto p = From({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"},
                 {"MASTER_ADDR", "10.0.0.1"}, {"MASTER_PORT", "29400"}, {"TORCHELASTIC_RUN_ID", "abc"}});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->launcher, "torchrun");
  EXPECT_EQ(p->node, 1);
  EXPECT_EQ(p->local_size, 2);
  EXPECT_EQ(p->master_addr, "10.0.0.1");
  EXPECT_EQ(p->master_port, 29400);
  EXPECT_EQ(p->job_id, "abc");
}

TEST(Placement, OpenMpiWithEpxOverrides) {
  auto p = From({{"OMPI_COMM_WORLD_RANK", "2"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "2"},
                 {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}, {"EPX_LOCAL_SIZE", "2"}, {"EPX_MASTER_PORT", "5000"}});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->launcher, "openmpi");
  // EPX_LOCAL_SIZE splits the host into two logical nodes; OMPI's local rank (2 of 4) is then
  // inconsistent with rank%2 only if given through EPX_LOCAL_RANK, which wins when set.
  EXPECT_EQ(p->local_size, 2);
  EXPECT_EQ(p->node, 1);
  EXPECT_EQ(p->master_port, 5000);
}

TEST(Placement, OpenMpiSingleHostDefaultsToLoopback) {
  auto p = From({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                 {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->master_addr, "127.0.0.1");
  EXPECT_EQ(p->master_port, 29500);
}

TEST(Placement, Slurm) {
  auto p = From({{"SLURM_PROCID", "6"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "2"},
                 {"SLURM_TASKS_PER_NODE", "4(x2)"}, {"SLURM_JOB_ID", "1234"}, {"MASTER_ADDR", "node1"}});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->launcher, "slurm");
  EXPECT_EQ(p->local_size, 4);
  EXPECT_EQ(p->node, 1);
  EXPECT_EQ(p->master_port, 29500 + 234);
  EXPECT_EQ(p->job_id, "1234");
}

void ExpectError(std::map<std::string, std::string> env, const std::string& needle) {
  auto p = From(std::move(env));
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), Code::kInvalidArgument);
  EXPECT_NE(p.status().message().find(needle), std::string::npos) << p.status().message();
}

TEST(Placement, BadValuesAreNamed) {
  ExpectError({{"EPX_RANK", "x"}, {"EPX_WORLD_SIZE", "2"}}, "EPX_RANK='x'");
  ExpectError({{"EPX_RANK", "-1"}, {"EPX_WORLD_SIZE", "2"}}, "EPX_RANK='-1'");
  ExpectError({{"RANK", "4"}, {"WORLD_SIZE", "4"}}, "rank 4 is not below world size 4");
  ExpectError({{"RANK", "1"}, {"WORLD_SIZE", "6"}, {"LOCAL_WORLD_SIZE", "4"}}, "not divisible by local size 4");
  ExpectError({{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "0"}, {"LOCAL_WORLD_SIZE", "2"}},
              "does not match rank 1");
  ExpectError({{"RANK", "1"}}, "WORLD_SIZE is missing");
  ExpectError({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}}, "not in 1..65535");
  ExpectError({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "8"}, {"SLURM_NTASKS_PER_NODE", "4"}}, "EPX_MASTER_ADDR");
  ExpectError({{"EPX_RANK", "0"}, {"EPX_WORLD_SIZE", "0"}}, "world size must be >= 1");
}

// epx-run --respawn tells a restarted process which restart it is.
TEST(Placement, RestartCount) {
  auto p = From({{"EPX_RANK", "1"}, {"EPX_WORLD_SIZE", "2"}, {"EPX_RESTART_COUNT", "2"}});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->restart_count, 2);
  EXPECT_NE(p->ToString().find("restart 2"), std::string::npos) << p->ToString();
  ExpectError({{"EPX_RANK", "1"}, {"EPX_WORLD_SIZE", "2"}, {"EPX_RESTART_COUNT", "x"}},
              "EPX_RESTART_COUNT='x'");
}

// Found by tests/fuzz/placement_fuzz: an empty EPX_JOB_ID was taken as the job id, so every job that
// set it empty shared heap socket names and bootstrap job hash. Empty now means unset (as in epx-run).
TEST(Placement, EmptyJobIdIsUnset) {
  auto p =
      From({{"EPX_RANK", "0"}, {"EPX_WORLD_SIZE", "2"}, {"EPX_MASTER_PORT", "4000"}, {"EPX_JOB_ID", ""}});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->job_id, "127.0.0.1-4000");
  p = From({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"TORCHELASTIC_RUN_ID", ""}, {"EPX_JOB_ID", ""}});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->job_id, "127.0.0.1-29500");
}

}  // namespace
}  // namespace epx
