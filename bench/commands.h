// bench/commands.h: the subcommands of epx-bench. Each registers its flags on its CLI11 subcommand
// and runs once per rank process under a Context; rank 0 prints the table and writes the JSON.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/status.h"
#include "transport/context.h"

namespace epx::bench {

class Command {
 public:
  virtual ~Command() = default;
  virtual void AddFlags(CLI::App& sub) = 0;
  // Process exit code: 0 ok, 1 failure, 2 bad arguments.
  virtual int Run(Context& ctx) = 0;
};

std::unique_ptr<Command> MakeShmCommand();         // shared-memory all-to-all vs the copy limit
std::unique_ptr<Command> MakeNormalCommand();      // normal dispatch/combine (the default table)
std::unique_ptr<Command> MakeLowLatencyCommand();  // low-latency (decode) dispatch/combine

// What the dispatch/combine tables (normal, low-latency) share: the problem shape, the loop, the check
// and the outputs. The commands' option structs derive from it and set their own defaults. The measured
// part they share (problem, timed loop, gathered figures, JSON) is in bench/exchange_run.h.
struct ExchangeFlags {
  int tokens = 0;
  int hidden = 7168;
  int topk = 8;
  int experts = 64;
  bool zero_copy = false;
  int iters = 0;
  int warmup = 0;
  bool check = false;
  uint64_t seed = 1;
  std::string json;
  std::string mpi = "auto";
  int rounds = 1;  // epx and the MPI baseline take turns in this many blocks (exchange_run.h RoundFlags)
};
// Registers --tokens, --hidden, --topk, --experts, --zero-copy, --iters, --warmup, --check, --seed, --json,
// --mpi and --rounds; the two docs say what tokens and zero-copy mean for the command.
void AddExchangeFlags(CLI::App& app, ExchangeFlags& f, const char* tokens_doc, const char* zero_copy_doc);

// Ends a table command on every rank: a failure before anything ran is printed and gives 2 (bad arguments)
// or 1; otherwise rank 0 prints header(), the op rows (dispatch, combine: median and p99 us, GB/s, rdma
// GB/s, cpu us, copy-limit GB/s and share) from the JSON the command built, after_op(op) below each row,
// then rest(), and writes --json. `label_width`: width of the op column.
int ReportExchange(Context& ctx, const char* command, const Status& st, const nlohmann::json& j,
                   const ExchangeFlags& f, int label_width, const std::function<std::string()>& header,
                   const std::function<void(const std::string& op)>& after_op,
                   const std::function<void()>& rest);

// Element-wise max over ranks of per-iteration times: the collective's step time as a user waits for it.
StatusOr<std::vector<double>> StepTimes(Bootstrap& boot, const std::vector<double>& mine, const char* phase);

}  // namespace epx::bench
