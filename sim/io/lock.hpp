// One writer per output path: an exclusive lock on `<output>.lock`, taken with flock(2).
//
// The lock file holds a few lines that describe its holder (pid, host, start time, command line),
// so a second run aimed at the same output can say who is writing it. The kernel drops a flock
// when its holder's file is closed, which includes the process dying by SIGKILL or a crash, so a
// lock file left behind by a killed run is free for the next one: it is never stale. flock works
// on local file systems and on NFS (Linux maps it to NFS byte-range locks); on file systems where
// it fails the run is refused with the reason rather than run unlocked.
#pragma once

#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

namespace selfnorm::io {

// Another process holds the lock on an output path.
class LockedError : public std::runtime_error {
 public:
  LockedError(const std::string& message, std::string holder)
      : std::runtime_error(message), holder_(std::move(holder)) {}
  // The holder's description as it wrote it ("" if it had not written it yet).
  const std::string& holder() const { return holder_; }

 private:
  std::string holder_;
};

// The lock on one output path, held for the object's lifetime.
class OutputLock {
 public:
  // Takes the lock on `output` without waiting, and writes `holder` (one or more "key: value"
  // lines) into the lock file. Throws LockedError naming the holder if another process has it,
  // and WriteError (io/results.hpp) if the lock file cannot be created (a read-only or missing
  // folder, a full disk).
  OutputLock(const std::filesystem::path& output, const std::string& holder);
  // Removes the lock file, then releases the lock.
  ~OutputLock();
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

// The lock file of an output path: `<output>.lock`.
std::filesystem::path lock_path(const std::filesystem::path& output);

// The holder's description if another process holds the lock on `output` (empty if it has not
// written one yet), nullopt if nobody does. Creates nothing; for status listings.
std::optional<std::string> lock_holder(const std::filesystem::path& output);

}  // namespace selfnorm::io
