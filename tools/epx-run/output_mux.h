// tools/epx-run/output_mux.h: turns each rank's stdout/stderr byte stream into whole lines prefixed
// with "[r<rank>] " on the launcher's own stdout/stderr.
//
// Lines from different ranks never interleave mid-line because a line is only ever written whole, in
// one write(2) batch together with the other complete lines of the same read. A trailing partial
// line waits for its newline (or for end of stream, when it is flushed with a newline added).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace epx::run {

// One of the launcher's output fds. A sink whose reader went away (EPIPE, e.g. `epx-run ... | head`)
// turns into a black hole instead of failing the job: ranks must still be drained so they never
// block on a full pipe.
class LineSink {
 public:
  explicit LineSink(int fd) : fd_(fd) {}
  // Writes all bytes (waits with poll() if the fd is non-blocking and full).
  void Write(std::string_view bytes);
  bool broken() const { return broken_; }
  int fd() const { return fd_; }

 private:
  int fd_;
  bool broken_ = false;
};

// Splits one stream into prefixed lines.
class LinePrefixer {
 public:
  // A partial line longer than max_line is emitted (with a newline) rather than buffered without
  // bound; such a line is then split, which only a program writing megabytes without '\n' notices.
  static constexpr size_t kDefaultMaxLine = size_t{1} << 20;

  LinePrefixer(std::string prefix, LineSink* sink, size_t max_line = kDefaultMaxLine)
      : prefix_(std::move(prefix)), sink_(sink), max_line_(max_line) {}

  // Emits every line completed by `data` in one sink write; keeps the unfinished tail.
  void Feed(std::string_view data);
  // End of stream: flushes the unfinished tail as a line of its own.
  void Finish();
  size_t lines() const { return lines_; }

 private:
  void AppendLine(std::string_view head, std::string_view tail);

  std::string prefix_;
  LineSink* sink_;
  size_t max_line_;
  std::string partial_;
  std::string out_;  // reused between feeds, so steady state allocates nothing
  size_t lines_ = 0;
};

enum class Pump { kData, kAgain, kEnd };
// One read (of up to buf_size bytes) from a non-blocking fd into `p`. kEnd: end of stream or a read
// error; the caller closes the fd and calls Finish().
Pump PumpOnce(int fd, LinePrefixer& p, char* buf, size_t buf_size);

}  // namespace epx::run
