#include "io/lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "io/results.hpp"

namespace selfnorm::io {

namespace fs = std::filesystem;

namespace {

// The whole content of an open file, from its start.
std::string read_all(int fd) {
  std::string text;
  char buf[4096];
  off_t offset = 0;
  while (true) {
    const ssize_t n = ::pread(fd, buf, sizeof buf, offset);
    if (n <= 0) break;
    text.append(buf, static_cast<std::size_t>(n));
    offset += n;
    if (text.size() > 65536) break;
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == '\0')) text.pop_back();
  return text;
}

// "pid: 12\nhost: h\n..." as "pid 12, host h, ..." for a one-line message.
std::string one_line(const std::string& holder) {
  std::string out;
  std::size_t start = 0;
  while (start < holder.size()) {
    std::size_t end = holder.find('\n', start);
    if (end == std::string::npos) end = holder.size();
    std::string line = holder.substr(start, end - start);
    const auto colon = line.find(": ");
    if (colon != std::string::npos) line.erase(colon, 1);
    if (!line.empty()) out += (out.empty() ? "" : ", ") + line;
    start = end + 1;
  }
  return out;
}

}  // namespace

fs::path lock_path(const fs::path& output) { return fs::path(output.string() + ".lock"); }

OutputLock::OutputLock(const fs::path& output, const std::string& holder) : path_(lock_path(output)) {
  // The holder removes the file before it releases the lock, so a lock taken on a file that has
  // meanwhile been unlinked (or replaced) is not the lock of this path: try again.
  for (int attempt = 0; attempt < 100; ++attempt) {
    const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) throw WriteError(path_, errno, "create the lock file");
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      if (err != EWOULDBLOCK) {
        ::close(fd);
        throw WriteError(path_, err, "lock the lock file (flock)");
      }
      const std::string other = read_all(fd);
      ::close(fd);
      const std::string who =
          other.empty() ? "it has not written its details to " + path_.string() + " yet" : one_line(other);
      throw LockedError(output.string() + " is being written by another selfnorm run (" + who +
                            "); wait for it to finish, or write elsewhere with -o",
                        other);
    }
    struct stat by_fd {};
    struct stat by_name {};
    if (::fstat(fd, &by_fd) == 0 && ::stat(path_.c_str(), &by_name) == 0 && by_fd.st_dev == by_name.st_dev &&
        by_fd.st_ino == by_name.st_ino) {
      const std::string text = holder + (holder.empty() || holder.back() == '\n' ? "" : "\n");
      ssize_t written = -1;
      const bool truncated = ::ftruncate(fd, 0) == 0;
      if (truncated) written = ::pwrite(fd, text.data(), text.size(), 0);
      if (written != static_cast<ssize_t>(text.size())) {
        // A short write sets no errno; its usual cause is a full disk.
        const int err = written >= 0 ? ENOSPC : errno;
        ::unlink(path_.c_str());
        ::close(fd);
        throw WriteError(path_, err, "write the lock file");
      }
      fd_ = fd;
      return;
    }
    ::close(fd);
  }
  throw WriteError(path_, 0, "take the lock (the lock file kept being replaced)");
}

OutputLock::~OutputLock() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());
  ::close(fd_);
}

std::optional<std::string> lock_holder(const fs::path& output) {
  const fs::path path = lock_path(output);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::optional<std::string> holder;
  if (::flock(fd, LOCK_SH | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) holder = one_line(read_all(fd));
  } else {
    ::flock(fd, LOCK_UN);
  }
  ::close(fd);
  return holder;
}

}  // namespace selfnorm::io
