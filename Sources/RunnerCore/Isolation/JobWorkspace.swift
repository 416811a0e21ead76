import CRunnerShims
import Dispatch
import Foundation
import Synchronization

/// The private work folders of a runner's jobs: `<work root>/<namespace>.<runner>.<pool>/<context name>`, mode
/// 0700, owned by the user the jobs run as, with a `tmp` folder inside for `TMPDIR`. Removed when the job ends unless the runner keeps
/// them; a folder left exactly as it was made is renamed `.spare-<n>` instead and becomes the next job's folder by
/// one rename (at most `SpareFolders.limit` of them; removed at a clean exit). Folders left by a runner that died are
/// found by `leftovers(keeping:)`.
///
/// File-system work that can take long runs on a queue of its own: removing a large tree must not hold a thread of
/// the cooperative pool. Making a job's folder (a few short syscalls) runs inline.
struct JobWorkspace: Sendable {
    /// `<work root>/<runner context name>`.
    let directory: String
    /// The work root, `directory`'s parent: worked out once, for the check before every job's folder.
    private let root: String
    /// Owner of the created folders (`--run-as`), nil to keep the runner's.
    let owner: (uid: UInt32, gid: UInt32)?
    /// Folders of finished jobs left exactly as they were made, renamed to the next job's name.
    private let spares = SpareFolders()

    private static let queue = DispatchQueue(label: "nativerunner.workspace")

    init(root: String, runner: String, owner: (uid: UInt32, gid: UInt32)?) {
        self.directory = (root as NSString).appendingPathComponent(runner)
        self.root = (directory as NSString).deletingLastPathComponent
        self.owner = owner
    }

    /// Creates the folder of one job attempt and its `tmp`; returns its path.
    ///
    /// The work root and the runner's directory must be real directories (not links) of the runner's own user (or
    /// root) that nobody else can write to: otherwise another local user could plant a link there and have the runner
    /// create, and hand to the job's user, a folder anywhere. A job folder found already there (a crashed run of
    /// the same entry) is removed first; nothing here follows a symbolic link.
    func create(name: String) async throws(IsolationError) -> String {
        let path = directory + "/" + name
        let owner = self.owner
        let directory = self.directory
        let root = self.root
        // Inline, on the calling task: a few lstat/mkdir/lchown on a local file system, bounded and short (a hop to
        // the queue and back cost more than the calls, on every job's path). Only replacing a folder left by a
        // crashed run of the same entry, a tree of any size, goes to the queue.
        if let spare = spares.take() {
            // One rename instead of two mkdir (and two rmdir at the job's end): on ext4 these are the dearest calls
            // a short job makes, for the inode they allocate and free.
            if JobWorkspace.checkRunnerDirectory(directory, root: root) == nil, rename(spare, path) == 0 { return path }
            _ = await remove(path: spare)
        }
        switch JobWorkspace.makeJobFolder(path, in: directory, root: root, owner: owner, replacing: false) {
        case .made: return path
        case .failed(let failure): throw failure
        case .exists:
            let outcome = await JobWorkspace.run {
                JobWorkspace.makeJobFolder(path, in: directory, root: root, owner: owner, replacing: true)
            }
            if case .failed(let failure) = outcome { throw failure }
            return path
        }
    }

    private enum FolderOutcome: Sendable {
        case made
        /// It was there already and `replacing` was false.
        case exists
        case failed(IsolationError)
    }

    /// Makes `path` and its `tmp` in `directory` (checked safe first, with its parent `root`), owned by `owner`; an
    /// existing `path` is removed first when `replacing`.
    private static func makeJobFolder(
        _ path: String, in directory: String, root: String, owner: (uid: UInt32, gid: UInt32)?, replacing: Bool
    ) -> FolderOutcome {
        // Checked for every job (two lstat): a directory replaced by a link meanwhile must not be used. Made again
        // (the work root too) only when it has gone.
        if let unusable = checkRunnerDirectory(directory, root: root) { return .failed(unusable) }
        if mkdir(path, 0o700) != 0 {
            guard errno == EEXIST else {
                return .failed(IsolationError(.workspace, "cannot create the work folder \(path): \(errnoText())"))
            }
            guard replacing else { return .exists }
            _ = removeTree(path)
            if mkdir(path, 0o700) != 0 {
                return .failed(IsolationError(.workspace, "cannot create the work folder \(path): \(errnoText())"))
            }
        }
        if mkdir(path + "/tmp", 0o700) != 0 {
            return .failed(IsolationError(.workspace, "cannot create the work folder \(path)/tmp: \(errnoText())"))
        }
        for folder in [path, path + "/tmp"] {
            if let owner, lchown(folder, owner.uid, owner.gid) != 0 {
                return .failed(
                    IsolationError(.workspace, "cannot hand \(folder) to uid \(owner.uid): \(errnoText())"))
            }
        }
        return .made
    }

    /// Why a directory the runner makes job folders in must not be trusted, or nil when it can be.
    static func unsafeReason(_ path: String) -> String? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return errnoText() }
        return unsafeReason(of: info)
    }

    /// Why a directory with this `lstat` must not be trusted, or nil when it can be.
    private static func unsafeReason(of info: stat) -> String? {
        if (info.st_mode & S_IFMT) == S_IFLNK { return "it is a symbolic link" }
        guard (info.st_mode & S_IFMT) == S_IFDIR else { return "it is not a directory" }
        if info.st_uid != runnerUser && info.st_uid != 0 {
            return "it belongs to uid \(info.st_uid), not to the runner"
        }
        if info.st_mode & 0o022 != 0 {
            return "others can write to it (mode \(String(info.st_mode & 0o7777, radix: 8)))"
        }
        return nil
    }

    /// Makes the work root and the runner's directory (once, at start) and checks that they are safe to use; the
    /// error says why not. A missing folder is made; an existing one must be a real directory of the runner's user
    /// (or root) that nobody else can write to.
    /// `prepare` on the calling thread (a few lstat and mkdir, for the periodic cleanup).
    func prepareNow() throws(IsolationError) {
        if let failure = JobWorkspace.makeRunnerDirectory(directory) { throw failure }
    }

    func prepare() async throws(IsolationError) {
        let directory = self.directory
        if let failure = await JobWorkspace.run({ JobWorkspace.makeRunnerDirectory(directory) }) { throw failure }
    }

    /// Why the work root or `directory` cannot be used, or nil; makes them first when `directory` is missing.
    private static func checkRunnerDirectory(_ directory: String, root: String) -> IsolationError? {
        var info = stat()
        guard lstat(directory, &info) == 0 else { return makeRunnerDirectory(directory) }
        if let unsafe = unsafeReason(root) {
            return IsolationError(.workspace, "the work root \(root) is not safe to use: \(unsafe)")
        }
        if let unsafe = unsafeReason(of: info) {
            return IsolationError(.workspace, "the work folder \(directory) is not safe to use: \(unsafe)")
        }
        return nil
    }

    /// Makes the work root and `directory` in it where missing, and answers why they cannot be used, or nil.
    private static func makeRunnerDirectory(_ directory: String) -> IsolationError? {
        let root = (directory as NSString).deletingLastPathComponent
        // lstat before anything is made: a planted link at the root must not be followed even by mkdir -p.
        var info = stat()
        if lstat(root, &info) == 0, let unsafe = unsafeReason(root) {
            return IsolationError(.workspace, "the work root \(root) is not safe to use: \(unsafe)")
        }
        if let failure = makeDirectories(root, mode: 0o711) {
            return IsolationError(.workspace, "cannot create the work root \(root): \(failure)")
        }
        if mkdir(directory, 0o711) != 0 && errno != EEXIST {
            return IsolationError(.workspace, "cannot create the work folder \(directory): \(errnoText())")
        }
        for folder in [root, directory] {
            if let unsafe = unsafeReason(folder) {
                return IsolationError(.workspace, "the work folder \(folder) is not safe to use: \(unsafe)")
            }
        }
        return nil
    }

    /// `mkdir -p` with `mode` for the folders it makes; the errno text of the first step that failed, or nil.
    private static func makeDirectories(_ path: String, mode: mode_t) -> String? {
        var made = ""
        for component in path.split(separator: "/") {
            made += "/" + component
            // What is there already is not made again (mkdir on a read-only mount fails even where it exists).
            var info = stat()
            if stat(made, &info) == 0 { continue }
            if mkdir(made, mode) != 0 && errno != EEXIST { return errnoText() }
        }
        return nil
    }

    /// Removes a job's folder and everything in it; false (after logging nothing) when it could not.
    @discardableResult
    func remove(path: String) async -> Bool {
        // Most jobs leave their folder as it was made: two rmdir, inline (rmdir never follows a link, and fails on
        // a folder with anything in it). Anything else is a tree of any size, removed on the queue.
        if JobWorkspace.removeAsMade(path) { return true }
        return await JobWorkspace.run { JobWorkspace.removeTree(path) }
    }

    /// Why `path` could not be removed, for the warning: tries once more, entry by entry and deepest first, without
    /// following a link, and answers the first failure (`<entry>: <errno text>`; for EPERM, that it may be immutable
    /// or in an append-only folder), or nil when it is gone now. Flags are not cleared here.
    func removalFailure(path: String) async -> String? {
        await JobWorkspace.run { JobWorkspace.firstRemovalFailure(path) }
    }

    private static func firstRemovalFailure(_ path: String) -> String? {
        func failure(_ entry: String, _ code: Int32 = errno) -> String {
            let hint = code == EPERM ? " (it may be immutable, or its folder append-only: chattr +i or +a)" : ""
            return "\(entry): \(errnoText(code))\(hint)"
        }
        var info = stat()
        guard lstat(path, &info) == 0 else { return errno == ENOENT ? nil : failure(path) }
        guard (info.st_mode & S_IFMT) == S_IFDIR else { return unlink(path) == 0 ? nil : failure(path) }
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0, let stream = fdopendir(fd) else {
            let code = errno
            if fd >= 0 { close(fd) }
            return failure(path, code)
        }
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: Int(NAME_MAX) + 1) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(stream)
        for name in names.sorted() {
            if let failed = firstRemovalFailure(path + "/" + name) { return failed }
        }
        return rmdir(path) == 0 || errno == ENOENT ? nil : failure(path)
    }

    /// Removes `path` and everything in it; when that fails, clears the immutable and append-only flags of the
    /// folder and its `tmp` (a job run as root may have set them: `chattr +i tmp`, `chattr +a .`) and tries again.
    private static func removeTree(_ path: String) -> Bool {
        if removeAll(path) || !pathExists(path) { return true }
        guard clearLockingFlags(path) else { return false }
        return removeAll(path) || !pathExists(path)
    }

    /// How deep `removeAll` descends before it moves a folder up: the descriptors it holds at once.
    static let removalDepth = 32

    /// Removes `path` and everything in it, without following a link and without building a path longer than
    /// `path` and one name: every entry is removed through its folder's descriptor, and a folder `removalDepth`
    /// levels down is first moved up into `path` itself (`.nr-deep-<n>`) and removed from there. A job's tree deeper
    /// than PATH_MAX (`mkdir d && cd d`, 2000 times) is removed too, which a removal by paths refused with "File
    /// name too long", leaving the folder behind for good. True when `path` is gone.
    static func removeAll(_ path: String) -> Bool {
        var info = stat()
        guard lstat(path, &info) == 0 else { return errno == ENOENT }
        guard info.st_mode & S_IFMT == S_IFDIR else { return unlink(path) == 0 || errno == ENOENT }
        let root = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard root >= 0 else { return false }
        var movedUp: [String] = []
        var moves = 0
        // Empties the folder open as `fd`, `depth` levels below `path`; false when anything stays.
        func empty(_ fd: Int32, depth: Int) -> Bool {
            guard let names = entryNames(fd) else { return false }
            var emptied = true
            for name in names {
                var entry = stat()
                guard fstatat(fd, name, &entry, AT_SYMLINK_NOFOLLOW) == 0 else {
                    if errno != ENOENT { emptied = false }
                    continue
                }
                guard entry.st_mode & S_IFMT == S_IFDIR else {
                    if unlinkat(fd, name, 0) != 0 && errno != ENOENT { emptied = false }
                    continue
                }
                if depth >= removalDepth {
                    var moved = false
                    for _ in 0..<100 where !moved {
                        moves += 1
                        let target = ".nr-deep-\(moves)"
                        // Not onto anything there (renameat would replace an empty folder of that name).
                        var there = stat()
                        guard fstatat(root, target, &there, AT_SYMLINK_NOFOLLOW) != 0 else { continue }
                        guard renameat(fd, name, root, target) == 0 else { break }
                        movedUp.append(target)
                        moved = true
                    }
                    if !moved { emptied = false }
                    continue
                }
                let child = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                guard child >= 0 else {
                    if errno != ENOENT { emptied = false }
                    continue
                }
                let childEmptied = empty(child, depth: depth + 1)
                close(child)
                if !childEmptied || (unlinkat(fd, name, AT_REMOVEDIR) != 0 && errno != ENOENT) { emptied = false }
            }
            return emptied
        }
        var emptied = empty(root, depth: 0)
        while let name = movedUp.popLast() {
            let folder = openat(root, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard folder >= 0 else {
                emptied = false
                continue
            }
            let folderEmptied = empty(folder, depth: 1)
            close(folder)
            if !folderEmptied || unlinkat(root, name, AT_REMOVEDIR) != 0 { emptied = false }
        }
        close(root)
        return emptied && (rmdir(path) == 0 || errno == ENOENT)
    }

    /// The names in the folder open as `fd` (not `.` and `..`), read through a duplicate of it; nil when it cannot
    /// be read.
    private static func entryNames(_ fd: Int32) -> [String]? {
        let copy = dup(fd)
        guard copy >= 0 else { return nil }
        guard let stream = fdopendir(copy) else {
            close(copy)
            return nil
        }
        defer { closedir(stream) }
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: Int(NAME_MAX) + 1) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Clears FS_IMMUTABLE_FL and FS_APPEND_FL on the folder and its `tmp`, opened without following a link (tmp
    /// from the folder's fd): true when either was set and is clear now.
    private static func clearLockingFlags(_ path: String) -> Bool {
        let folder = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard folder >= 0 else { return false }
        defer { close(folder) }
        let tmp = openat(folder, "tmp", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        defer { if tmp >= 0 { close(tmp) } }
        let cleared = [nr_clear_locking_flags(folder), tmp >= 0 ? nr_clear_locking_flags(tmp) : 0]
        return cleared.contains(1) && !cleared.contains(-1)
    }

    /// Removes `path` and its empty `tmp` if that is all there is. The folder is opened without following a link:
    /// a job that replaced its folder by a link to another one must not have that one's `tmp` removed.
    private static func removeAsMade(_ path: String) -> Bool {
        let folder = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard folder >= 0 else { return false }
        let emptied = unlinkat(folder, "tmp", AT_REMOVEDIR) == 0 || errno == ENOENT
        close(folder)
        return emptied && rmdir(path) == 0
    }

    /// Done with a finished job's folder: kept for the next job when it is exactly as it was made (an empty `tmp`
    /// in it and nothing else, no extended attribute, neither immutable nor append-only, on the runner's file system;
    /// its mode is set back to 0700), else removed with everything in it (flags cleared first where set). False
    /// when it could not be removed.
    @discardableResult
    func release(path: String) async -> Bool {
        if spares.hasRoom, JobWorkspace.isAsMade(path, owner: owner, directory: directory) {
            // Out of the job's name at once: what is left under job names is what jobs still use.
            let spare = directory + "/.spare-\(spares.nextNumber())"
            if rename(path, spare) == 0 {
                // Another job's folder may have taken the last place meanwhile.
                if spares.add(spare) { return true }
                return JobWorkspace.removeAsMade(spare)
            }
        }
        return await remove(path: path)
    }

    /// Whether a folder (or anything else) of this name is there already: a crashed run of the same entry left it.
    func hasEntry(name: String) -> Bool { pathExists((directory as NSString).appendingPathComponent(name)) }

    /// Whether `path` is a kept folder of a finished job (not a leftover of a dead runner).
    func isSpare(_ path: String) -> Bool { spares.contains(path) }

    /// Removes the kept folders (at a clean exit).
    func removeSpares() {
        for spare in spares.takeAll() { _ = JobWorkspace.removeAsMade(spare) }
    }

    /// `path` is a directory of the jobs' user and group on the runner directory's file system with nothing in it but
    /// an empty directory `tmp`, neither with an extended attribute (an ACL is one) nor immutable or append-only
    /// (`chattr +i`, `+a`: the next job could not write there, nor the folder be removed); both get mode 0700 back.
    /// Nothing here follows a link.
    private static func isAsMade(_ path: String, owner: (uid: UInt32, gid: UInt32)?, directory: String) -> Bool {
        var runnerInfo = stat()
        guard lstat(directory, &runnerInfo) == 0 else { return false }
        let uid = owner?.uid ?? runnerUser
        // The group the folders were made with: the owner's (lchown), else what mkdir gave them, the runner's
        // directory's group when it is set-group-ID (tmp inherits it from the job folder), else the runner's.
        let gid = owner?.gid ?? (runnerInfo.st_mode & S_ISGID != 0 ? runnerInfo.st_gid : runnerGroup)
        // Every job's path: two opens, and for each folder an fstat, an flistxattr, an FS_IOC_GETFLAGS ioctl and two
        // getdents64, and a chmod only for a mode the job changed.
        func asMade(_ fd: Int32, holdingOnly only: String?) -> Bool {
            var info = stat()
            guard fd >= 0, fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR, info.st_uid == uid,
                info.st_gid == gid, info.st_dev == runnerInfo.st_dev, nr_xattr_list_size(fd) == 0,
                nr_dir_holds_only(fd, only) == 1
            else { return false }
            return info.st_mode & 0o7777 == 0o700 || fchmod(fd, 0o700) == 0
        }
        let folder = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        defer { if folder >= 0 { close(folder) } }
        guard asMade(folder, holdingOnly: "tmp") else { return false }
        let tmp = openat(folder, "tmp", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        defer { if tmp >= 0 { close(tmp) } }
        return asMade(tmp, holdingOnly: nil)
    }

    /// The runner's effective uid, which does not change while it runs.
    private static let runnerUser = geteuid()
    /// The runner's effective gid, likewise.
    private static let runnerGroup = getegid()

    /// Folders under this runner's directory whose names are not in `keeping` (the running jobs').
    /// Nothing when the runner's directory or the work root is not safe (a link, or another user's): listing through
    /// a planted link would hand its target's contents to the cleanup.
    func leftovers(keeping: Set<String>) async -> [String] {
        let directory = self.directory
        return await JobWorkspace.run {
            let root = (directory as NSString).deletingLastPathComponent
            guard JobWorkspace.unsafeReason(root) == nil, JobWorkspace.unsafeReason(directory) == nil else { return [] }
            let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
            return names.filter { !keeping.contains($0) }.sorted().map { directory + "/" + $0 }
        }
    }

    private static func run<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in queue.async { continuation.resume(returning: work()) } }
    }
}

/// Whether anything is at `path`, a link included (`lstat`: nothing is followed).
func pathExists(_ path: String) -> Bool {
    var info = stat()
    return lstat(path, &info) == 0
}

func errnoText(_ code: Int32 = errno) -> String { String(cString: strerror(code)) }

/// Up to `limit` folders of finished jobs, each empty but for an empty `tmp`, waiting to be renamed for a new job.
final class SpareFolders: Sendable {
    static let limit = 16
    private let paths = Mutex<[String]>([])
    private let numbers = Atomic<Int>(0)

    func nextNumber() -> Int { numbers.add(1, ordering: .relaxed).newValue }

    var hasRoom: Bool { paths.withLock { $0.count < SpareFolders.limit } }
    /// False (nothing added) when `limit` are kept already.
    func add(_ path: String) -> Bool {
        paths.withLock { paths in
            guard paths.count < SpareFolders.limit else { return false }
            paths.append(path)
            return true
        }
    }
    func take() -> String? { paths.withLock { $0.popLast() } }
    func takeAll() -> [String] {
        paths.withLock { paths in
            defer { paths = [] }; return paths
        }
    }
    func contains(_ path: String) -> Bool { paths.withLock { $0.contains(path) } }
}
