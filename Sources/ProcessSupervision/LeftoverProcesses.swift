import Glibc

/// Finds and kills processes left behind by an earlier run of the same supervisor owner, recognised by variables in
/// their environment (a crashed runner's jobs keep theirs). Best effort: a process that replaced its environment is
/// not found; cgroups are the complete answer.
public enum LeftoverProcesses {
    /// SIGKILLs every process other than this one whose environment contains all of `markers`, and returns their
    /// pids. Reads /proc/<pid>/environ, which needs the same user or root.
    @discardableResult
    public static func kill(withEnvironment markers: [String: String]) -> [Int32] {
        guard !markers.isEmpty else { return [] }
        let wanted = markers.map { Array("\($0.key)=\($0.value)".utf8) }
        let me = getpid()
        var killed: [Int32] = []
        for pid in System.numberedEntries(of: "/proc") where pid != me && pid > 1 {
            guard let environment = System.environment(of: pid), environment.containsVariables(wanted) else {
                continue
            }
            if Glibc.kill(pid, SIGKILL) == 0 { killed.append(pid) }
        }
        return killed
    }
}

extension [UInt8] {
    /// Whether these raw /proc/<pid>/environ bytes (NUL-separated `NAME=value` entries) hold every one of `variables`.
    func containsVariables(_ variables: [[UInt8]]) -> Bool {
        let present = Set(split(separator: 0, omittingEmptySubsequences: true).map(Array.init))
        return variables.allSatisfy(present.contains)
    }
}
