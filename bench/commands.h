// bench/commands.h: the subcommands of epx-bench. Each registers its flags on its CLI11 subcommand
// and runs once per rank process under a Context; rank 0 prints the table and writes the JSON.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
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

// Element-wise max over ranks of per-iteration times: the collective's step time as a user waits for it.
StatusOr<std::vector<double>> StepTimes(Bootstrap& boot, const std::vector<double>& mine, const char* phase);

}  // namespace epx::bench
