import Glibc

/// Finds and kills processes left behind by an earlier run of the same supervisor owner, recognised by variables in
/// their environment (a crashed runner's jobs keep theirs). Best effort: a process that replaced its environment is
/// not found; cgroups are the complete answer.
public enum LeftoverProcesses {
    /// SIGKILLs every process other than this one whose environment contains all of `markers`, and returns their
    /// pids. Reads /proc/<pid>/environ, which needs the same user or root.
    @discardableResult
    public static func kill(withEnvironment markers: [String: String]) -> [Int32] {
        guard !markers.isEmpty, let directory = opendir("/proc") else { return [] }
        defer { closedir(directory) }
        let wanted = Set(markers.map { Array("\($0.key)=\($0.value)".utf8) })
        let me = getpid()
        var killed: [Int32] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard let pid = Int32(name), pid != me, pid > 1 else { continue }
            guard let environment = environment(of: pid) else { continue }
            let variables = Set(environment.split(separator: 0, omittingEmptySubsequences: true).map(Array.init))
            guard wanted.isSubset(of: variables) else { continue }
            if Glibc.kill(pid, SIGKILL) == 0 { killed.append(pid) }
        }
        return killed
    }

    /// The raw bytes of /proc/<pid>/environ, or nil when unreadable (gone, a kernel thread, another user's).
    private static func environment(of pid: Int32) -> [UInt8]? {
        let fd = open("/proc/\(pid)/environ", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while bytes.count < 1 << 20 {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { break }
            bytes += buffer[..<n]
        }
        return bytes
    }
}
