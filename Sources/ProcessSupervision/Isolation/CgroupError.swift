/// A cgroup operation failed: what, on which file, and the errno or the content that was read.
public struct CgroupError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What kind of failure.
    public enum Code: Sendable, Equatable {
        /// No cgroup filesystem (v1 or v2) is mounted, or the process's own cgroup is not visible in it.
        case notMounted
        /// A limit needs a controller that the hierarchy does not offer here.
        case controllerMissing
        /// A controller could not be enabled in a `cgroup.subtree_control`.
        case controllerNotEnabled
        /// A job cgroup name or a limit value that cannot be used.
        case invalidArgument
        /// Reading a file failed.
        case readFailed
        /// Writing a file failed (the kernel refused the value, or the file is missing).
        case writeFailed
        /// A file held something that could not be parsed.
        case unexpectedContent
        /// mkdir of a cgroup failed.
        case createFailed
        /// Processes were still in the cgroup when the deadline passed.
        case stillPopulated
        /// rmdir of a cgroup failed (EBUSY past the deadline, or another errno).
        case removeFailed
    }

    /// What kind of failure.
    public var code: Code
    /// The file or directory involved.
    public var path: String
    /// The errno of the failed call (0 when there was none).
    public var errno: Int32
    /// What failed and where, e.g. "cannot write '67108864' to /sys/fs/cgroup/memory/nr/job-1/memory.limit_in_bytes:
    /// Device or resource busy".
    public var message: String

    /// An error; normally made by a cgroup driver (or a fake `CgroupFileSystem` in tests).
    public init(code: Code, path: String, errno: Int32 = 0, message: String) {
        self.code = code
        self.path = path
        self.errno = errno
        self.message = message
    }

    /// The message.
    public var description: String { message }

    static func read(_ path: String, errno err: Int32) -> CgroupError {
        CgroupError(
            code: .readFailed, path: path, errno: err, message: "cannot read \(path): \(System.describe(errno: err))")
    }

    static func write(_ path: String, value: String, errno err: Int32) -> CgroupError {
        CgroupError(
            code: .writeFailed, path: path, errno: err,
            message: "cannot write '\(value)' to \(path): \(System.describe(errno: err))")
    }

    static func unexpected(_ path: String, _ content: String, expected: String) -> CgroupError {
        let shown = content.count > 200 ? String(content.prefix(200)) + "..." : content
        return CgroupError(
            code: .unexpectedContent, path: path, message: "unexpected content in \(path) (\(expected)): '\(shown)'")
    }

    static func invalid(_ path: String, _ what: String) -> CgroupError {
        CgroupError(code: .invalidArgument, path: path, message: what)
    }
}
