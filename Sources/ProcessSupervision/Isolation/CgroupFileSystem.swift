import Glibc

/// The file operations the cgroup drivers and the hierarchy detection need, so that tests can run them against a fake
/// tree that behaves like cgroupfs (mkdir fills in the interface files, rmdir refuses a populated cgroup).
///
/// Paths are the host's absolute paths (`/sys/fs/cgroup/...`, `/proc/self/mountinfo`); an implementation may map them
/// somewhere else. Errors carry the path and the errno.
public protocol CgroupFileSystem: Sendable {
    /// The whole content of the file.
    func readFile(_ path: String) throws(CgroupError) -> String
    /// Writes `value` to an existing file in one write (cgroupfs takes a value only whole).
    func writeFile(_ path: String, _ value: String) throws(CgroupError)
    /// Whether something exists at `path`.
    func fileExists(_ path: String) -> Bool
    /// Creates one directory (a cgroup); EEXIST is reported like any other errno.
    func makeDirectory(_ path: String) throws(CgroupError)
    /// Removes one empty directory (a cgroup); cgroupfs answers EBUSY while it has members or children.
    func removeDirectory(_ path: String) throws(CgroupError)
    /// The names of the subdirectories (child cgroups) of `path`, sorted.
    func subdirectories(of path: String) throws(CgroupError) -> [String]
    /// When the directory at `path` last changed (its mtime, seconds since the epoch), nil when it is not there.
    func modificationTime(_ path: String) -> Double?
    /// Sets the directory's mtime to now (`utimensat`); false when it could not.
    @discardableResult func touch(_ path: String) -> Bool
}

/// The real filesystem, optionally below `root` (a test's fake /proc and /sys in a temporary folder).
public struct LiveCgroupFileSystem: CgroupFileSystem {
    /// Prefixed to every path; "/" for the host itself.
    public var root: String

    /// The host's files, or those below `root`.
    public init(root: String = "/") {
        self.root = root
    }

    /// The real path behind a host path.
    public func resolve(_ path: String) -> String {
        root == "/" || root.isEmpty ? path : root + path
    }

    /// `read` until end of file.
    public func readFile(_ path: String) throws(CgroupError) -> String {
        let real = resolve(path)
        switch System.readWholeFile(real) {
        case .success(let bytes): return String(decoding: bytes, as: UTF8.self)
        case .failure(let err): throw .read(real, errno: err.value)
        }
    }

    /// `open(O_WRONLY | O_TRUNC)` + one `write`.
    public func writeFile(_ path: String, _ value: String) throws(CgroupError) {
        let real = resolve(path)
        let err = System.writeWholeFile(real, Array(value.utf8))
        if err != 0 { throw .write(real, value: value, errno: err) }
    }

    /// `access(F_OK)`.
    public func fileExists(_ path: String) -> Bool {
        System.pathExists(resolve(path))
    }

    /// `mkdir(0755)`.
    public func makeDirectory(_ path: String) throws(CgroupError) {
        try directoryCall(System.makeDirectory, on: path, code: .createFailed, verb: "create")
    }

    /// `rmdir`.
    public func removeDirectory(_ path: String) throws(CgroupError) {
        try directoryCall(System.removeDirectory, on: path, code: .removeFailed, verb: "remove")
    }

    /// `opendir` + `readdir`, directories only.
    public func subdirectories(of path: String) throws(CgroupError) -> [String] {
        let real = resolve(path)
        switch System.subdirectoryNames(real) {
        case .success(let names): return names
        case .failure(let err): throw .read(real, errno: err.value)
        }
    }

    /// `lstat`: `st_mtim`.
    public func modificationTime(_ path: String) -> Double? {
        var info = stat()
        guard lstat(resolve(path), &info) == 0 else { return nil }
        return Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9
    }

    /// `utimensat(now, AT_SYMLINK_NOFOLLOW)`.
    @discardableResult
    public func touch(_ path: String) -> Bool {
        utimensat(AT_FDCWD, resolve(path), nil, AT_SYMLINK_NOFOLLOW) == 0
    }

    private func directoryCall(
        _ call: (String) -> Int32, on path: String, code: CgroupError.Code, verb: String
    ) throws(CgroupError) {
        let real = resolve(path)
        let err = call(real)
        if err != 0 {
            throw CgroupError(
                code: code, path: real, errno: err,
                message: "cannot \(verb) cgroup \(real): \(System.describe(errno: err))")
        }
    }
}

extension CgroupFileSystem {
    /// The content, or nil when the file does not exist (ENOENT): an interface file of a controller that is not there.
    func readIfPresent(_ path: String) throws(CgroupError) -> String? {
        do {
            return try readFile(path)
        } catch let error where error.errno == ENOENT {
            return nil
        }
    }

    /// The space-separated words of a file (cgroup.controllers, cgroup.subtree_control); none when it is missing.
    func readWords(_ path: String) throws(CgroupError) -> [String] {
        (try readIfPresent(path) ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
    }

    /// `path` holds one unsigned number, or "max" (nil).
    func readNumberOrMax(_ path: String) throws(CgroupError) -> UInt64? {
        guard let text = try readIfPresent(path) else { return nil }
        let value = text.trimmingWhitespace
        if value == "max" { return nil }
        guard let number = UInt64(value) else { throw .unexpected(path, text, expected: "a number or 'max'") }
        return number
    }

    /// `path` holds one unsigned number; nil when the file does not exist.
    func readNumber(_ path: String) throws(CgroupError) -> UInt64? {
        guard let text = try readIfPresent(path) else { return nil }
        guard let number = UInt64(text.trimmingWhitespace) else { throw .unexpected(path, text, expected: "a number") }
        return number
    }

    /// A flat-keyed file ("key value" per line: memory.events, cpu.stat, memory.oom_control, pids.events); nil when
    /// the file does not exist. Lines that are not "key number" are skipped.
    func readKeyedNumbers(_ path: String) throws(CgroupError) -> [String: UInt64]? {
        guard let text = try readIfPresent(path) else { return nil }
        var values: [String: UInt64] = [:]
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count == 2, let number = UInt64(fields[1]) { values[String(fields[0])] = number }
        }
        return values
    }

    /// mkdir of `directory` and every missing directory between `base` and it.
    func makeDirectories(_ directory: String, below base: String) throws(CgroupError) {
        let components = directory.dropFirst(base.count).split(separator: "/")
        let inside = directory == base || directory.hasPrefix(base.hasSuffix("/") ? base : base + "/")
        guard inside, !components.contains(where: { $0 == "." || $0 == ".." }) else {
            throw .invalid(directory, "cgroup parent \(directory) is not inside the hierarchy mounted at \(base)")
        }
        var path = base
        for component in components {
            path = joinPath(path, String(component))
            if fileExists(path) { continue }
            do {
                try makeDirectory(path)
            } catch let error where error.errno == EEXIST {
                continue
            }
        }
    }

    /// The pids in a `cgroup.procs` (empty when the file does not exist: the cgroup is gone).
    func readProcesses(_ path: String) throws(CgroupError) -> [Int32] {
        guard let text = try readIfPresent(path) else { return [] }
        var pids: [Int32] = []
        for line in text.split(separator: "\n") {
            guard let pid = Int32(line.trimmingWhitespace) else {
                throw .unexpected(path, text, expected: "one pid per line")
            }
            pids.append(pid)
        }
        return pids
    }
}

extension StringProtocol {
    /// Without leading and trailing spaces, tabs and newlines (no Foundation needed).
    var trimmingWhitespace: String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return String(self[first...last])
    }
}
