import Glibc

/// The raw calls of the isolation drivers and the resource sampler, in the style of `System.swift`: each wrapper names
/// the C call it wraps and reports failure as an errno value.
extension System {
    /// The whole content of a file: `open(O_RDONLY | O_CLOEXEC)`, `read` until end of file, `close`. Reads until EOF
    /// rather than by `st_size`, which is 0 for /proc and cgroupfs files.
    static func readWholeFile(_ path: String, limit: Int = 1 << 20) -> Result<[UInt8], Errno> {
        let fd = openReadOnly(path)
        if fd < 0 { return .failure(Errno(-fd)) }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 8192)
        while bytes.count < limit {
            let n = buffer.withUnsafeMutableBytes { read(fd, into: $0) }
            if n < 0 { return .failure(Errno(Int32(-n))) }
            if n == 0 { break }
            bytes += buffer[..<n]
        }
        return .success(bytes)
    }

    /// `open(path, O_WRONLY | O_TRUNC | O_CLOEXEC)` (never creates), one `write` of all of `bytes`, `close`: 0 or
    /// errno. cgroupfs takes a value only in a single write, so a short write is reported as EIO rather than retried.
    static func writeWholeFile(_ path: String, _ bytes: [UInt8]) -> Int32 {
        let fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC)
        if fd < 0 { return Glibc.errno }
        defer { close(fd) }
        while true {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n == bytes.count { return 0 }
            if n >= 0 { return EIO }
            let err = Glibc.errno
            if err != EINTR { return err }
        }
    }

    /// `access(path, F_OK) == 0`.
    static func pathExists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    /// `mkdir(path, 0755)`: 0 or errno.
    static func makeDirectory(_ path: String) -> Int32 {
        mkdir(path, 0o755) == 0 ? 0 : Glibc.errno
    }

    /// `rmdir(path)`: 0 or errno.
    static func removeDirectory(_ path: String) -> Int32 {
        rmdir(path) == 0 ? 0 : Glibc.errno
    }

    /// `opendir` + `readdir`: the names of the subdirectories of `path` (DT_DIR; "." and ".." left out), or errno.
    static func subdirectoryNames(_ path: String) -> Result<[String], Errno> {
        guard let directory = opendir(path) else { return .failure(Errno(Glibc.errno)) }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            guard entry.pointee.d_type == UInt8(DT_DIR) else { continue }
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return .success(names.sorted())
    }

    /// `opendir("/proc")` + `readdir`: every numeric entry, i.e. every process visible in this pid namespace.
    static func numericDirectoryEntries(_ path: String) -> [Int32] {
        guard let directory = opendir(path) else { return [] }
        defer { closedir(directory) }
        var pids: [Int32] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            if let pid = Int32(name), pid > 0 { pids.append(pid) }
        }
        return pids
    }

    /// `kill(pid, signal)` of one process: 0 or errno (ESRCH when it is gone).
    static func signalProcess(_ pid: pid_t, _ signal: Int32) -> Int32 {
        precondition(pid > 1, "refusing to signal pid \(pid)")
        return kill(pid, signal) == 0 ? 0 : Glibc.errno
    }

    /// `statvfs(path)`: (bytes available to an unprivileged user, bytes in all) or errno.
    static func fileSystemSpace(_ path: String) -> Result<(available: UInt64, total: UInt64), Errno> {
        var info = statvfs()
        guard statvfs(path, &info) == 0 else { return .failure(Errno(Glibc.errno)) }
        let blockSize = UInt64(info.f_frsize)
        return .success((UInt64(info.f_bavail) * blockSize, UInt64(info.f_blocks) * blockSize))
    }

    /// `sysconf(_SC_CLK_TCK)`: the unit of /proc's and cpuacct.stat's CPU times (USER_HZ, 100 almost everywhere).
    static func clockTicksPerSecond() -> Int64 {
        let ticks = sysconf(Int32(_SC_CLK_TCK))
        return ticks > 0 ? Int64(ticks) : 100
    }

    /// `sysconf(_SC_PAGESIZE)`: the unit of /proc/<pid>/statm.
    static func pageSize() -> Int64 {
        let size = sysconf(Int32(_SC_PAGESIZE))
        return size > 0 ? Int64(size) : 4096
    }
}
