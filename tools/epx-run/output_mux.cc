#include "tools/epx-run/output_mux.h"

#include <poll.h>
#include <unistd.h>

#include <cerrno>

namespace epx::run {

void LineSink::Write(std::string_view bytes) {
  while (!bytes.empty() && !broken_) {
    ssize_t n = ::write(fd_, bytes.data(), bytes.size());
    if (n >= 0) {
      bytes.remove_prefix(static_cast<size_t>(n));
    } else if (errno == EAGAIN) {
      // Our stdout may be a non-blocking fd we inherited; wait for room instead of spinning.
      pollfd p{fd_, POLLOUT, 0};
      ::poll(&p, 1, -1);
    } else if (errno != EINTR) {
      broken_ = true;  // EPIPE (SIGPIPE is ignored), EBADF, ENOSPC...: drop the rest of this stream
    }
  }
}

void LinePrefixer::AppendLine(std::string_view head, std::string_view tail) {
  out_ += prefix_;
  out_ += head;
  out_ += tail;
  out_ += '\n';
  ++lines_;
}

void LinePrefixer::Feed(std::string_view data) {
  out_.clear();
  while (!data.empty()) {
    size_t nl = data.find('\n');
    if (nl == std::string_view::npos) {
      partial_.append(data);
      if (partial_.size() >= max_line_) {
        AppendLine(partial_, {});
        partial_.clear();
      }
      break;
    }
    AppendLine(partial_, data.substr(0, nl));
    partial_.clear();
    data.remove_prefix(nl + 1);
  }
  if (!out_.empty()) sink_->Write(out_);
}

void LinePrefixer::Finish() {
  if (partial_.empty()) return;
  out_.clear();
  AppendLine(partial_, {});
  partial_.clear();
  sink_->Write(out_);
}

Pump PumpOnce(int fd, LinePrefixer& p, char* buf, size_t buf_size) {
  for (;;) {
    ssize_t n = ::read(fd, buf, buf_size);
    if (n > 0) {
      p.Feed(std::string_view(buf, static_cast<size_t>(n)));
      return Pump::kData;
    }
    if (n == 0) return Pump::kEnd;
    if (errno == EINTR) continue;
    return errno == EAGAIN ? Pump::kAgain : Pump::kEnd;
  }
}

}  // namespace epx::run
