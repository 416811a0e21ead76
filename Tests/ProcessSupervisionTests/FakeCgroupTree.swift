import Foundation
import ProcessSupervision
import Synchronization
import TestSupport

/// Pids above the kernel's PID_MAX_LIMIT (4194304): no real process ever has one, so a driver that signals them
/// cannot hit anything on the host.
let impossiblePids: [Int32] = [5_000_001, 5_000_002]

/// A cgroup v2 tree in a temporary folder that behaves like cgroupfs where the drivers depend on it: mkdir fills in
/// the core interface files and those of the controllers the parent enables, cgroup.controllers follows the parent's
/// cgroup.subtree_control, enabling a controller checks the no-internal-processes rule, writing a pid to cgroup.procs
/// moves it, cgroup.kill and cgroup.freeze take effect, and rmdir refuses (EBUSY) a cgroup with members or children.
final class FakeCgroupTree: CgroupFileSystem, Sendable {
    /// The temporary folder that stands for "/".
    let root: String
    /// The v2 mount point inside the fake host.
    let mountPoint = "/sys/fs/cgroup"

    private struct State {
        /// rmdir answers EBUSY this many more times for a path.
        var busyAnswers: [String: Int] = [:]
        /// Writes that fail with an errno, by path.
        var failingWrites: [String: Int32] = [:]
        /// Interface files mkdir does not create (a kernel without them).
        var absentFiles: Set<String> = []
        /// Every write, in order.
        var writes: [(path: String, value: String)] = []
        var removeAttempts: [String: Int] = [:]
    }

    private let state = Mutex(State())
    private let files: LiveCgroupFileSystem
    private let dropsExitedMembers: Bool

    /// An empty tree whose root cgroup offers `controllers`. With `dropsExitedMembers`, cgroup.procs lists only pids
    /// of live processes, as the kernel does once a member has exited (for tests that put real processes in it).
    init(offering controllers: [String], absentFiles: Set<String> = [], dropsExitedMembers: Bool = false) throws {
        root = try makeTemporaryDirectory()
        self.dropsExitedMembers = dropsExitedMembers
        files = LiveCgroupFileSystem(root: root)
        state.withLock { $0.absentFiles = absentFiles }
        try FileManager.default.createDirectory(atPath: root + mountPoint, withIntermediateDirectories: true)
        for (name, content) in [
            ("cgroup.controllers", controllers.joined(separator: " ")), ("cgroup.subtree_control", ""),
            ("cgroup.procs", ""), ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
        ] {
            try plant(joinPath(mountPoint, name), content)
        }
    }

    deinit {
        try? FileManager.default.removeItem(atPath: root)
    }

    // MARK: What a test sets up and inspects

    /// Writes a file as the kernel would have it (a counter, a sample), bypassing the emulation.
    func plant(_ path: String, _ content: String) throws {
        try content.write(toFile: root + path, atomically: false, encoding: .utf8)
    }

    /// The file's content, or nil when it does not exist.
    func content(_ path: String) -> String? {
        try? String(contentsOfFile: root + path, encoding: .utf8)
    }

    /// Whether a directory (cgroup) exists.
    func hasDirectory(_ path: String) -> Bool {
        var isDirectory: ObjCBool = false
        return FileManager.default.fileExists(atPath: root + path, isDirectory: &isDirectory) && isDirectory.boolValue
    }

    /// A cgroup the host already has (the runner's own, say), with members.
    func makeCgroup(_ path: String, members: [Int32] = []) throws {
        var current = mountPoint
        for component in path.dropFirst(mountPoint.count).split(separator: "/") {
            current = joinPath(current, String(component))
            if !hasDirectory(current) { try makeDirectory(current) }
        }
        try plant(joinPath(path, "cgroup.procs"), members.map { "\($0)\n" }.joined())
    }

    func answerBusy(_ path: String, times: Int) {
        state.withLock { $0.busyAnswers[path] = times }
    }

    func failWrites(to path: String, errno: Int32) {
        state.withLock { $0.failingWrites[path] = errno }
    }

    var writes: [(path: String, value: String)] { state.withLock { $0.writes } }

    func removeAttempts(_ path: String) -> Int { state.withLock { $0.removeAttempts[path] ?? 0 } }

    // MARK: CgroupFileSystem

    func readFile(_ path: String) throws(CgroupError) -> String {
        if path.hasSuffix("/cgroup.controllers"), let parent = parentCgroup(of: directory(of: path)) {
            return try files.readFile(joinPath(parent, "cgroup.subtree_control"))
        }
        let text = try files.readFile(path)
        guard dropsExitedMembers, path.hasSuffix("/cgroup.procs") else { return text }
        return text.split(separator: "\n").filter { Int32($0).map(processIsAlive) ?? false }.map { "\($0)\n" }.joined()
    }

    func writeFile(_ path: String, _ value: String) throws(CgroupError) {
        let failure = state.withLock { state -> Int32? in
            state.writes.append((path, value))
            return state.failingWrites[path]
        }
        if let failure { throw fail(path, value, failure) }
        guard files.fileExists(path) else { throw fail(path, value, ENOENT) }
        let directory = directory(of: path)
        switch (path as NSString).lastPathComponent {
        case "cgroup.subtree_control": try changeControllers(of: directory, value)
        case "cgroup.procs": try move(value, into: directory)
        case "cgroup.kill":
            try files.writeFile(path, value)
            // The kernel kills the cgroup's members and those of every descendant.
            if value == "1" {
                for cgroup in allCgroups(below: directory) {
                    try files.writeFile(joinPath(cgroup, "cgroup.procs"), "")
                }
            }
        case "cgroup.freeze":
            try files.writeFile(path, value)
            try files.writeFile(joinPath(directory, "cgroup.events"), "populated 1\nfrozen \(value)\n")
        default: try files.writeFile(path, value)
        }
    }

    func fileExists(_ path: String) -> Bool { files.fileExists(path) }

    func makeDirectory(_ path: String) throws(CgroupError) {
        try files.makeDirectory(path)
        let absent = state.withLock { $0.absentFiles }
        let enabled = (try? readFile(joinPath(parentCgroup(of: path) ?? mountPoint, "cgroup.subtree_control"))) ?? ""
        var created = [
            "cgroup.procs": "", "cgroup.subtree_control": "", "cgroup.events": "populated 0\nfrozen 0\n",
            "cgroup.kill": "", "cgroup.freeze": "0", "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
        ]
        for controller in enabled.split(separator: " ") {
            created.merge(Self.interfaceFiles[String(controller)] ?? [:]) { old, _ in old }
        }
        for (name, content) in created where !absent.contains(name) {
            do { try plant(joinPath(path, name), content) } catch { throw fail(path, name, EIO) }
        }
    }

    func removeDirectory(_ path: String) throws(CgroupError) {
        let busy = state.withLock { state -> Bool in
            state.removeAttempts[path, default: 0] += 1
            guard let left = state.busyAnswers[path], left > 0 else { return false }
            state.busyAnswers[path] = left - 1
            return true
        }
        let populated = !(content(joinPath(path, "cgroup.procs")) ?? "").isEmpty
        let hasChildren = !((try? files.subdirectories(of: path)) ?? []).isEmpty
        if busy || populated || hasChildren {
            throw CgroupError(code: .removeFailed, path: root + path, errno: EBUSY, message: "rmdir \(path): EBUSY")
        }
        guard hasDirectory(path) else {
            throw CgroupError(code: .removeFailed, path: root + path, errno: ENOENT, message: "rmdir \(path): ENOENT")
        }
        try? FileManager.default.removeItem(atPath: root + path)
    }

    func subdirectories(of path: String) throws(CgroupError) -> [String] {
        try files.subdirectories(of: path)
    }

    func modificationTime(_ path: String) -> Double? { files.modificationTime(path) }

    func touch(_ path: String) -> Bool { files.touch(path) }

    // MARK: Kernel behaviour

    /// The files a controller adds to a child cgroup, with the kernel's initial values.
    static let interfaceFiles: [String: [String: String]] = [
        "memory": [
            "memory.max": "max", "memory.current": "0", "memory.peak": "0", "memory.swap.max": "max",
            "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
        ],
        "pids": ["pids.max": "max", "pids.current": "0", "pids.peak": "0", "pids.events": "max 0\n"],
        "cpu": ["cpu.max": "max 100000", "cpu.weight": "100"],
    ]

    /// "+a -b": each controller must be offered to the cgroup (EINVAL) and, outside the root, enabling needs a cgroup
    /// without members (EBUSY). Adds the controller's files to the existing children.
    private func changeControllers(of cgroup: String, _ value: String) throws(CgroupError) {
        let path = joinPath(cgroup, "cgroup.subtree_control")
        let offered = Set(try readFile(joinPath(cgroup, "cgroup.controllers")).split(separator: " ").map(String.init))
        var enabled = Set(try files.readFile(path).split(separator: " ").map(String.init))
        for token in value.split(separator: " ") {
            let name = String(token.dropFirst())
            guard offered.contains(name) else { throw fail(path, value, EINVAL) }
            if token.hasPrefix("+") {
                if cgroup != mountPoint, !(try files.readFile(joinPath(cgroup, "cgroup.procs"))).isEmpty {
                    throw fail(path, value, EBUSY)
                }
                enabled.insert(name)
                for child in try files.subdirectories(of: cgroup) {
                    for (file, initial) in Self.interfaceFiles[name] ?? [:] {
                        do { try plant(joinPath(joinPath(cgroup, child), file), initial) } catch {
                            throw fail(path, value, EIO)
                        }
                    }
                }
            } else {
                enabled.remove(name)
            }
        }
        try files.writeFile(path, enabled.sorted().joined(separator: " "))
    }

    /// A pid written to cgroup.procs leaves every other cgroup of the tree.
    private func move(_ value: String, into cgroup: String) throws(CgroupError) {
        let pidText = value.trimmingCharacters(in: .whitespacesAndNewlines)
        let path = joinPath(cgroup, "cgroup.procs")
        guard Int32(pidText) != nil else { throw fail(path, value, EINVAL) }
        for other in allCgroups(below: mountPoint) where other != cgroup {
            let procs = joinPath(other, "cgroup.procs")
            let kept = (content(procs) ?? "").split(separator: "\n").filter { $0 != pidText }
            do { try plant(procs, kept.map { "\($0)\n" }.joined()) } catch { throw fail(procs, value, EIO) }
        }
        do { try plant(path, (content(path) ?? "") + pidText + "\n") } catch { throw fail(path, value, EIO) }
    }

    private func allCgroups(below cgroup: String) -> [String] {
        let children = ((try? files.subdirectories(of: cgroup)) ?? []).map { joinPath(cgroup, $0) }
        return [cgroup] + children.flatMap(allCgroups(below:))
    }

    private func directory(of path: String) -> String { (path as NSString).deletingLastPathComponent }

    private func parentCgroup(of cgroup: String) -> String? {
        cgroup == mountPoint || !cgroup.hasPrefix(mountPoint) ? nil : directory(of: cgroup)
    }

    private func fail(_ path: String, _ value: String, _ err: Int32) -> CgroupError {
        CgroupError(
            code: .writeFailed, path: root + path, errno: err,
            message: "cannot write '\(value)' to \(root + path): \(String(cString: strerror(err)))")
    }
}

/// `base/child` (the tests' copy of the driver's internal helper).
func joinPath(_ base: String, _ child: String) -> String {
    base.hasSuffix("/") ? base + child : base + "/" + child
}
