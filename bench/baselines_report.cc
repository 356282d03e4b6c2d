// bench/baselines_report.cc: the MPI / copy-limit columns of the epx-bench tables (bench/mpi_compare.h).
#include <cstdio>
#include <string>

#include "bench/bench_stats.h"
#include "bench/mpi_compare.h"

namespace epx::bench {

void MergeMpiRuns(MpiRun* run, const MpiRun& more) {
  if (!run->ran) {  // the first block (or --mpi off / not available, which every block says)
    *run = more;
    return;
  }
  run->dispatch_steps.insert(run->dispatch_steps.end(), more.dispatch_steps.begin(),
                             more.dispatch_steps.end());
  run->combine_steps.insert(run->combine_steps.end(), more.combine_steps.begin(), more.combine_steps.end());
  run->mismatches += more.mismatches;
  run->dispatch = Summarize(run->dispatch_steps);
  run->combine = Summarize(run->combine_steps);
}

void AddMpiJson(const MpiRun& m, double d_bytes, double c_bytes, nlohmann::json* j) {
  nlohmann::json& o = *j;
  if (!m.ran) {
    o["mpi"] = "not run: " + m.why_not;
    return;
  }
  o["mpi"] = "Open MPI MPI_Alltoall + MPI_Alltoallv (bench/mpi)";
  o["mpi_dispatch_us_p50"] = m.dispatch.median_us;
  o["mpi_dispatch_us_p99"] = m.dispatch.p99_us;
  o["mpi_combine_us_p50"] = m.combine.median_us;
  o["mpi_combine_us_p99"] = m.combine.p99_us;
  o["mpi_dispatch_GBps"] = Gbps(d_bytes, m.dispatch.median_us);
  o["mpi_combine_GBps"] = Gbps(c_bytes, m.combine.median_us);
  const double ed = o["dispatch_us_p50"].get<double>(), ec = o["combine_us_p50"].get<double>();
  o["dispatch_vs_mpi"] = ed > 0 ? m.dispatch.median_us / ed : 0.0;
  o["combine_vs_mpi"] = ec > 0 ? m.combine.median_us / ec : 0.0;
  o["total_vs_mpi"] = ed + ec > 0 ? (m.dispatch.median_us + m.combine.median_us) / (ed + ec) : 0.0;
  o["mpi_check_mismatches"] = m.mismatches;
  if (o.contains("floor_us")) {  // the most any exchange of that kind could beat MPI by (exchange_run.cc)
    const double mpi_both = m.dispatch.median_us + m.combine.median_us;
    o["mpi_over_floor"] = mpi_both / o["floor_us"].get<double>();
    o["mpi_over_floor_zero_copy"] = mpi_both / o["floor_zero_copy_us"].get<double>();
    if (o.contains("floor_dram_us")) o["mpi_over_floor_dram"] = mpi_both / o["floor_dram_us"].get<double>();
    if (o.contains("floor_serial_us"))
      o["mpi_over_floor_serial"] = mpi_both / o["floor_serial_us"].get<double>();
  }
}

void PrintBaselines(const nlohmann::json& j) {
  const bool mpi = j.contains("mpi_dispatch_us_p50");
  std::printf("\n%-22s %11s %11s %8s   %11s %11s %8s\n", "baseline", "disp_p50_us", "disp_p99_us", "GB/s",
              "comb_p50_us", "comb_p99_us", "GB/s");
  auto row = [&](const char* name, const std::string& p) {
    std::printf("%-22s %11.1f %11.1f %8.2f   %11.1f %11.1f %8.2f\n", name,
                j[p + "dispatch_us_p50"].get<double>(), j[p + "dispatch_us_p99"].get<double>(),
                j[p + "dispatch_GBps"].get<double>(), j[p + "combine_us_p50"].get<double>(),
                j[p + "combine_us_p99"].get<double>(), j[p + "combine_GBps"].get<double>());
  };
  row("epx", "");
  if (mpi) row("MPI Alltoallv", "mpi_");
  row("copy limit (memcpy)", "copy_");
  if (mpi)
    std::printf(
        "epx speed-up vs MPI: dispatch %.2fx, combine %.2fx, both %.2fx (MPI time / epx time, medians)\n",
        j["dispatch_vs_mpi"].get<double>(), j["combine_vs_mpi"].get<double>(),
        j["total_vs_mpi"].get<double>());
  else
    std::printf("MPI baseline %s\n", j.value("mpi", std::string("not run")).c_str());
  std::printf("epx vs copy limit: dispatch %.0f%%, combine %.0f%% (copy time / epx time, medians)\n",
              100.0 * j["dispatch_vs_copy"].get<double>(), 100.0 * j["combine_vs_copy"].get<double>());
  if (j.contains("floor_us")) {
    std::printf("reduce limit (weighted sum of the combine rows, warm): p50 %.1f us, p99 %.1f us\n",
                j["reduce_combine_us_p50"].get<double>(), j["reduce_combine_us_p99"].get<double>());
    std::printf(
        "floor: copy(dispatch) + copy(combine) + reduce = %.1f us (outputs in private memory); "
        "copy(dispatch) + reduce = %.1f us (zero-copy)\n",
        j["floor_us"].get<double>(), j["floor_zero_copy_us"].get<double>());
    if (mpi)
      std::printf(
          "most any exchange could beat MPI by (MPI dispatch + combine) / floor: %.2fx, zero-copy %.2fx\n",
          j["mpi_over_floor"].get<double>(), j["mpi_over_floor_zero_copy"].get<double>());
  }
  if (j.contains("floor_dram_us")) {
    std::printf(
        "DRAM floor (caches cold): stream copy(dispatch) p50 %.1f us + cold reduce p50 %.1f us = %.1f us",
        j["stream_dispatch_us_p50"].get<double>(), j["reduce_cold_combine_us_p50"].get<double>(),
        j["floor_dram_us"].get<double>());
    if (j.contains("mpi_over_floor_dram"))
      std::printf("; MPI / DRAM floor %.2fx, epx / DRAM floor %.2fx", j["mpi_over_floor_dram"].get<double>(),
                  (j["dispatch_us_p50"].get<double>() + j["combine_us_p50"].get<double>()) /
                      j["floor_dram_us"].get<double>());
    std::printf("\n");
  }
  if (j.contains("floor_serial_us")) {
    std::printf("serial floor: FP8 cast of the dispatch rows p50 %.1f us + DRAM floor = %.1f us",
                j["cast_dispatch_us_p50"].get<double>(), j["floor_serial_us"].get<double>());
    if (j.contains("mpi_over_floor_serial"))
      std::printf("; MPI / serial floor %.2fx, epx / serial floor %.2fx",
                  j["mpi_over_floor_serial"].get<double>(),
                  (j["dispatch_us_p50"].get<double>() + j["combine_us_p50"].get<double>()) /
                      j["floor_serial_us"].get<double>());
    std::printf("\n");
  }
  if (j.contains("traffic_combine_us_p50"))
    std::printf(
        "combine traffic floor (the least bytes of an exact combine from private y: %.1f MB per rank; "
        "CPU time, ranks sharing a core added): p50 %.1f us; epx combine / floor %.2fx\n",
        j["traffic_combine_MB_per_rank"].get<double>(), j["traffic_combine_us_p50"].get<double>(),
        j["combine_us_p50"].get<double>() / j["traffic_combine_us_p50"].get<double>());
}

}  // namespace epx::bench
