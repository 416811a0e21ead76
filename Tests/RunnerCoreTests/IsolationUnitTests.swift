import CRunnerShims
import Foundation
import ProcessSupervision
import RunnerProtocol
import Synchronization
import XCTest

@testable import RunnerCore

final class SecretMaskerTests: XCTestCase {
    private func run(_ masker: inout SecretMasker, _ chunks: [String]) -> String {
        var out: [UInt8] = []
        for chunk in chunks { out += masker.mask(.stdout, Array(chunk.utf8)) }
        out += masker.flush(.stdout)
        return String(decoding: out, as: UTF8.self)
    }

    func testNamedAndSuffixedSecretsAreMaskedOthersAreNot() {
        var masker = SecretMasker(
            environment: [
                "API_TOKEN": "tok-12345", "DB_PASSWORD": "hunter22", "MY_SECRET": "s3cr3t!", "PLAIN": "visible-value",
                "CUSTOM": "custom-key", "SHORT_TOKEN": "abc",
            ], secretNames: ["CUSTOM"])
        let text = run(
            &masker, ["token=tok-12345 pw=hunter22 s=s3cr3t! c=custom-key plain=visible-value short=abc\n"])
        XCTAssertEqual(text, "token=*** pw=*** s=*** c=*** plain=visible-value short=abc\n")
    }

    func testSecretSplitAcrossChunksIsMasked() {
        var masker = SecretMasker(environment: ["X_TOKEN": "abcdefgh"], secretNames: [])
        XCTAssertEqual(run(&masker, ["start abc", "def", "gh end"]), "start *** end")
        // A prefix of a secret that turns out not to be one is released, whole and in order.
        XCTAssertEqual(run(&masker, ["xx abcd", "zz"]), "xx abcdzz")
        XCTAssertEqual(run(&masker, ["ends with abcdef"]), "ends with abcdef")
    }

    func testHeldBackBytesAreOnlyAPossibleSecretPrefix() {
        var masker = SecretMasker(environment: ["X_TOKEN": "abcdefgh"], secretNames: [])
        XCTAssertEqual(String(decoding: masker.mask(.stdout, Array("line one\n".utf8)), as: UTF8.self), "line one\n")
        XCTAssertEqual(String(decoding: masker.mask(.stdout, Array("ab".utf8)), as: UTF8.self), "")
        XCTAssertEqual(String(decoding: masker.mask(.stdout, Array("x".utf8)), as: UTF8.self), "abx")
    }

    func testStreamsAreMaskedSeparately() {
        var masker = SecretMasker(environment: ["X_TOKEN": "abcdefgh"], secretNames: [])
        XCTAssertEqual(masker.mask(.stdout, Array("abcd".utf8)), [])
        XCTAssertEqual(masker.mask(.stderr, Array("efgh".utf8)), Array("efgh".utf8))
        XCTAssertEqual(masker.mask(.stdout, Array("efgh".utf8)), Array("***".utf8))
    }

    func testNoSecretsPassesBytesThrough() {
        var masker = SecretMasker(environment: ["PATH": "/bin"], secretNames: [])
        XCTAssertFalse(masker.isActive)
        XCTAssertEqual(masker.mask(.stdout, [1, 2, 3]), [1, 2, 3])
    }

    /// However the output is cut into chunks, the automata mask exactly what the plain scan of the whole output
    /// masks (every secret tried at every position, longest first): random secrets over a three-letter alphabet (so
    /// that they overlap, nest and share prefixes), random output, random chunks.
    func testChunkedMaskingIsThePlainScanOfTheWholeOutput() {
        var generator = SplitMix(seed: 7)
        for round in 0..<400 {
            let secrets = (0..<Int.random(in: 1...6, using: &generator)).map { _ in
                String(
                    (0..<Int.random(in: 4...7, using: &generator)).map { _ in "abc".randomElement(using: &generator)! })
            }
            let environment = Dictionary(
                secrets.enumerated().map { ("S\($0.offset)_TOKEN", $0.element) }, uniquingKeysWith: { a, _ in a })
            var masker = SecretMasker(environment: environment, secretNames: [])
            // Made of secrets, beginnings of secrets and single letters: matches, near-matches and nesting.
            var text: [UInt8] = []
            let length = Int.random(in: 0...120, using: &generator)
            while text.count < length {
                let secret = Array(secrets.randomElement(using: &generator)!.utf8)
                switch Int.random(in: 0..<3, using: &generator) {
                case 0: text += secret
                case 1: text += secret.prefix(Int.random(in: 1..<secret.count, using: &generator))
                default: text.append("abcx".randomElement(using: &generator)!.asciiValue!)
                }
            }
            var chunks: [[UInt8]] = []
            var rest = text[...]
            while !rest.isEmpty {
                let size = Int.random(in: 1...max(1, rest.count), using: &generator)
                chunks.append(Array(rest.prefix(size)))
                rest = rest.dropFirst(size)
            }
            var got: [UInt8] = []
            for chunk in chunks { got += masker.mask(.stdout, chunk) }
            got += masker.flush(.stdout)
            XCTAssertEqual(
                String(decoding: got, as: UTF8.self), String(decoding: plainScan(text, secrets), as: UTF8.self),
                "round \(round): secrets \(secrets), chunks \(chunks.map { String(decoding: $0, as: UTF8.self) })")
        }
    }

    /// A secret that begins with another is masked whole when a chunk ends inside it (the shorter one is not taken
    /// while the longer one may still come), and a secret beginning before a shorter one's match holds it back too.
    func testALongerSecretStillComingIsWaitedFor() {
        var masker = SecretMasker(environment: ["A_TOKEN": "abcd", "B_TOKEN": "abcdef"], secretNames: [])
        XCTAssertEqual(run(&masker, ["xx abcde", "f yy"]), "xx *** yy")
        XCTAssertEqual(run(&masker, ["xx abcde", " yy"]), "xx ***e yy")
        XCTAssertEqual(run(&masker, ["xx abcd"]), "xx ***")
        var nested = SecretMasker(environment: ["A_TOKEN": "abcd", "B_TOKEN": "xabcdQ"], secretNames: [])
        XCTAssertEqual(run(&nested, ["xabcd", "Q."]), "***.")
        XCTAssertEqual(run(&nested, ["xabcd", "R."]), "x***R.")
    }

    /// Thousands of secrets sharing their first byte, and output made of that byte with a few of them in it: each
    /// one is masked, and the rest passes as it was (the plain scan tried every secret at every byte of it).
    func testThousandsOfSecretsWithACommonPrefixInAFlood() {
        var generator = SplitMix(seed: 11)
        let secrets = (0..<3000).map { _ in
            "x" + String((0..<14).map { _ in "abcdefghijklmnop".randomElement(using: &generator)! })
        }
        let environment = Dictionary(
            uniqueKeysWithValues: secrets.enumerated().map { ("S\($0.offset)_TOKEN", $0.element) })
        var masker = SecretMasker(environment: environment, secretNames: [])
        let flood = [UInt8](repeating: UInt8(ascii: "x"), count: 1 << 20)
        var text: [UInt8] = []
        var expected: [UInt8] = []
        for secret in [secrets[0], secrets[1234], secrets[2999]] {
            text += flood + Array(secret.utf8)
            expected += flood + SecretMasker.mask
        }
        var got: [UInt8] = []
        var offset = 0
        while offset < text.count {
            let end = min(text.count, offset + 65_536)
            got += masker.mask(.stdout, Array(text[offset..<end]))
            offset = end
        }
        got += masker.flush(.stdout)
        XCTAssertEqual(got.count, expected.count)
        XCTAssertTrue(got == expected)
    }
}

/// The reference: the whole output scanned at once, every secret (of at least the minimum length) tried at every
/// position, longest first.
private func plainScan(_ text: [UInt8], _ secrets: [String]) -> [UInt8] {
    let candidates = Set(secrets.map { Array($0.utf8) }).filter { $0.count >= SecretMasker.minimumLength }
        .sorted { $0.count > $1.count }
    var out: [UInt8] = []
    var index = 0
    while index < text.count {
        if let secret = candidates.first(where: {
            text.count - index >= $0.count && text[index..<(index + $0.count)].elementsEqual($0)
        }) {
            out += SecretMasker.mask
            index += secret.count
        } else {
            out.append(text[index])
            index += 1
        }
    }
    return out
}

/// A seeded generator, so that a failing round can be run again.
private struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

final class IsolationContextNameTests: XCTestCase {
    func testNamesAreSafeAndCarryTheStreamId() {
        let delivery = DeliveryKey(queue: "default", streamId: "1700000000000-3")
        let name = isolationContextName(jobId: "../../etc/passwd ü", delivery: delivery)
        XCTAssertTrue(name.hasPrefix("job-1700000000000-3-"), name)
        XCTAssertTrue(name.hasSuffix("-______etc_passwd__"), name)
        XCTAssertFalse(name.contains("/"))
        XCTAssertEqual(name, isolationContextName(jobId: "../../etc/passwd ü", delivery: delivery), "stable")
        XCTAssertEqual(streamId(inContextName: name), "1700000000000-3")
        XCTAssertNil(streamId(inContextName: "supervisor"))
        XCTAssertNil(streamId(inContextName: "job-abc-1-x"))
    }

    /// Two deliveries that run at once on one runner: the same entry id in two queues, job ids that sanitise alike.
    func testDeliveriesOfTheSameStreamIdRunningAtOnceGetDifferentNames() {
        let sameId = "5000000000000-0"
        let names = [
            isolationContextName(jobId: "coll.1", delivery: DeliveryKey(queue: "qa", streamId: sameId)),
            isolationContextName(jobId: "coll:1", delivery: DeliveryKey(queue: "qb", streamId: sameId)),
            // Another queue alone, or another job id alone, is enough.
            isolationContextName(jobId: "coll.1", delivery: DeliveryKey(queue: "qb", streamId: sameId)),
            isolationContextName(jobId: "coll:1", delivery: DeliveryKey(queue: "qa", streamId: sameId)),
        ]
        XCTAssertEqual(Set(names).count, names.count, "\(names)")
        for name in names {
            XCTAssertTrue(name.hasPrefix("job-"), "found by the cleanup's prefix: \(name)")
            XCTAssertTrue(name.hasSuffix("-coll_1"), "readable: \(name)")
            XCTAssertEqual(streamId(inContextName: name), sameId)
        }
        // The longest job id and stream id still make a name far within a file name's 255 bytes.
        let longest = isolationContextName(
            jobId: String(repeating: "x", count: 200),
            delivery: DeliveryKey(queue: "q", streamId: "18446744073709551615-18446744073709551615"))
        XCTAssertLessThanOrEqual(longest.utf8.count, 100, longest)
    }
}

final class JobWorkspaceTests: XCTestCase {
    func testCreateRemoveAndLeftovers() async throws {
        let root = NSTemporaryDirectory() + "nr-workspace-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let workspace = JobWorkspace(root: root, runner: "r1", owner: (uid: 65534, gid: 65534))
        let path = try await workspace.create(name: "job-1-0-a")
        XCTAssertEqual(path, root + "/r1/job-1-0-a")
        var info = stat()
        XCTAssertEqual(stat(path + "/tmp", &info), 0)
        XCTAssertEqual(info.st_uid, 65534)
        XCTAssertEqual(info.st_mode & 0o777, 0o700)
        _ = try await workspace.create(name: "job-2-0-b")
        let leftovers = await workspace.leftovers(keeping: ["job-1-0-a"])
        XCTAssertEqual(leftovers, [root + "/r1/job-2-0-b"])
        FileManager.default.createFile(atPath: path + "/tmp/file", contents: Data("x".utf8))
        let removed = await workspace.remove(path: path)
        XCTAssertTrue(removed)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path))
    }

    /// The folder of a crashed run of the same entry is replaced (on the queue): the new attempt starts empty.
    func testAFolderLeftByACrashedRunIsReplacedByAnEmptyOne() async throws {
        let root = NSTemporaryDirectory() + "nr-workspace-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let workspace = JobWorkspace(root: root, runner: "r1", owner: nil)
        let path = try await workspace.create(name: "job-1-0-a")
        FileManager.default.createFile(atPath: path + "/tmp/left-over", contents: Data("x".utf8))
        let again = try await workspace.create(name: "job-1-0-a")
        XCTAssertEqual(again, path)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: path), ["tmp"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: path + "/tmp"), [])
    }
}

/// A finished job's folder left as it was made is kept (renamed `.spare-<n>`) and becomes the next job's folder;
/// anything else is removed, and nothing is kept past a clean exit.
final class WorkspaceReuseTests: XCTestCase {
    private var root = ""
    private var workspace: JobWorkspace!

    override func setUp() {
        root = NSTemporaryDirectory() + "nr-reuse-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        workspace = JobWorkspace(root: root, runner: "r1", owner: nil)
    }

    override func tearDown() {
        // A flag a test set and the runner did not clear (a failing test) must not leave the folder behind.
        for folder in [root]
            + (FileManager.default.enumerator(atPath: root)?.allObjects as? [String] ?? []).map({
                root + "/" + $0
            })
        {
            let fd = open(folder, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if fd >= 0 {
                _ = nr_clear_locking_flags(fd)
                close(fd)
            }
        }
        try? FileManager.default.removeItem(atPath: root)
        try? FileManager.default.removeItem(atPath: root + "-victim")
    }

    private func names(_ path: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: path).sorted()
    }

    private func mode(_ path: String) -> mode_t {
        var info = stat()
        return lstat(path, &info) == 0 ? info.st_mode & 0o7777 : 0
    }

    func testAnUntouchedFolderIsRenamedForTheNextJob() async throws {
        let first = try await workspace.create(name: "job-a")
        var before = stat()
        XCTAssertEqual(lstat(first, &before), 0)
        XCTAssertEqual(chmod(first, 0o755), 0, "a mode the job set is not kept")
        XCTAssertEqual(chmod(first + "/tmp", 0o1777), 0, "nor one it set on tmp")
        let released = await workspace.release(path: first)
        XCTAssertTrue(released)
        XCTAssertFalse(FileManager.default.fileExists(atPath: first), "nothing stays under the job's name")
        XCTAssertEqual(try names(workspace.directory), [".spare-1"])
        XCTAssertTrue(workspace.isSpare(workspace.directory + "/.spare-1"))

        let second = try await workspace.create(name: "job-b")
        var after = stat()
        XCTAssertEqual(lstat(second, &after), 0)
        XCTAssertEqual(after.st_ino, before.st_ino, "the same folder, renamed")
        XCTAssertEqual(try names(workspace.directory), ["job-b"])
        XCTAssertEqual(try names(second), ["tmp"])
        XCTAssertEqual(try names(second + "/tmp"), [])
        XCTAssertEqual(mode(second), 0o700)
        XCTAssertEqual(mode(second + "/tmp"), 0o700)
        XCTAssertFalse(workspace.isSpare(workspace.directory + "/.spare-1"))
    }

    /// A job that nests folders deeper than PATH_MAX (`mkdir d && cd d`, 2500 times) does not leave its folder
    /// behind: the removal by paths failed with "File name too long" at every try, for good (found by breaker17).
    /// A link down there is removed, not followed.
    func testATreeDeeperThanPathMaxIsRemoved() async throws {
        let victim = root + "-victim"
        try FileManager.default.createDirectory(atPath: victim, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: victim + "/keep", contents: Data("keep".utf8))
        let path = try await workspace.create(name: "job-deep")
        defer {
            // GNU rm removes any depth: a failing run must not leave the tree in the temporary folder.
            let rm = Process()
            rm.executableURL = URL(fileURLWithPath: "/bin/rm")
            rm.arguments = ["-rf", path]
            try? rm.run()
            rm.waitUntilExit()
        }
        var fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        for level in 0..<2500 {
            XCTAssertEqual(mkdirat(fd, "d", 0o700), 0)
            if level % 500 == 0 {
                let file = openat(fd, "f", O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
                XCTAssertGreaterThanOrEqual(file, 0)
                close(file)
                XCTAssertEqual(symlinkat(victim, fd, "link"), 0)
            }
            let next = openat(fd, "d", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            close(fd)
            fd = next
            XCTAssertGreaterThanOrEqual(fd, 0)
        }
        close(fd)
        let released = await workspace.release(path: path)
        XCTAssertTrue(released)
        var info = stat()
        XCTAssertNotEqual(lstat(path, &info), 0, "the folder is gone")
        XCTAssertEqual(try names(workspace.directory), [])
        XCTAssertEqual(try names(victim), ["keep"], "nothing followed the links")
    }

    func testAFolderWithAnythingInItIsRemovedNotKept() async throws {
        let victim = root + "-victim"
        try FileManager.default.createDirectory(atPath: victim, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: victim + "/keep", contents: Data("keep".utf8))
        let layouts: [(String, (String) throws -> Void)] = [
            ("a file", { FileManager.default.createFile(atPath: $0 + "/out.txt", contents: Data("x".utf8)) }),
            ("a file in tmp", { FileManager.default.createFile(atPath: $0 + "/tmp/t", contents: Data()) }),
            (
                "a folder",
                { try FileManager.default.createDirectory(atPath: $0 + "/sub", withIntermediateDirectories: false) }
            ),
            (
                "tmp as a link",
                { path in
                    try FileManager.default.removeItem(atPath: path + "/tmp")
                    XCTAssertEqual(symlink(victim, path + "/tmp"), 0)
                }
            ),
            ("no tmp", { try FileManager.default.removeItem(atPath: $0 + "/tmp") }),
        ]
        for (index, (what, change)) in layouts.enumerated() {
            let path = try await workspace.create(name: "job-\(index)")
            try change(path)
            let released = await workspace.release(path: path)
            XCTAssertTrue(released, what)
            XCTAssertFalse(FileManager.default.fileExists(atPath: path), what)
            XCTAssertEqual(try names(workspace.directory), [], "\(what): removed, not kept")
        }
        XCTAssertEqual(try names(victim), ["keep"], "nothing outside was touched")
    }

    func testAtMostTheLimitIsKeptAndACleanExitRemovesThem() async throws {
        var paths: [String] = []
        for index in 0..<(SpareFolders.limit + 3) { paths.append(try await workspace.create(name: "job-\(index)")) }
        for path in paths {
            let released = await workspace.release(path: path)
            XCTAssertTrue(released)
        }
        XCTAssertEqual(try names(workspace.directory).count, SpareFolders.limit)
        XCTAssertTrue(try names(workspace.directory).allSatisfy { $0.hasPrefix(".spare-") })
        workspace.removeSpares()
        XCTAssertEqual(try names(workspace.directory), [])
    }

    func testAFolderReplacedByALinkIsRemovedWithoutTouchingItsTarget() async throws {
        let victim = root + "-victim"
        try FileManager.default.createDirectory(atPath: victim + "/tmp", withIntermediateDirectories: true)
        let path = try await workspace.create(name: "job-link")
        try FileManager.default.removeItem(atPath: path)
        XCTAssertEqual(symlink(victim, path), 0)
        _ = await workspace.release(path: path)
        var info = stat()
        XCTAssertNotEqual(lstat(path, &info), 0, "the link is gone")
        XCTAssertEqual(try names(victim), ["tmp"], "the target's empty tmp is still there")
        XCTAssertEqual(try names(workspace.directory), [])
    }

    /// A job that changed its folder's group (or tmp's) must not hand that group to the next job: such a folder is
    /// not as made and is removed. Needs root (a group the runner is not in).
    func testAFolderWhoseGroupWasChangedIsRemovedNotKept() async throws {
        try XCTSkipIf(geteuid() != 0, "changing a folder to a group the runner is not in needs root")
        for inside in ["", "/tmp"] {
            let path = try await workspace.create(name: "job-group")
            XCTAssertEqual(lchown(path + inside, UInt32.max, 65534), 0)
            let released = await workspace.release(path: path)
            XCTAssertTrue(released, inside)
            XCTAssertEqual(try names(workspace.directory), [], "\(inside): removed, not kept")
            let next = try await workspace.create(name: "job-next")
            var info = stat()
            XCTAssertEqual(lstat(next + inside, &info), 0)
            XCTAssertEqual(info.st_gid, getegid(), "the next job's folder\(inside) has the runner's group")
            try FileManager.default.removeItem(atPath: next)
        }
    }

    /// A job run as root that made its folder or tmp immutable or append-only (`chattr +i tmp`, `chattr +a .`) must
    /// not hand it to the next job, which could not write there (nor could a `+a` folder be removed): not as made,
    /// its flags cleared and removed.
    func testAnImmutableOrAppendOnlyFolderIsRemovedNotKept() async throws {
        try XCTSkipIf(geteuid() != 0, "setting the immutable and append-only flags needs root (CAP_LINUX_IMMUTABLE)")
        let cases: [(String, Int32, String)] = [
            ("/tmp", NR_FS_IMMUTABLE_FL, "chattr +i tmp"), ("", NR_FS_APPEND_FL, "chattr +a ."),
            ("", NR_FS_IMMUTABLE_FL, "chattr +i ."), ("/tmp", NR_FS_APPEND_FL, "chattr +a tmp"),
        ]
        for (inside, flag, what) in cases {
            let path = try await workspace.create(name: "job-flags")
            let fd = open(path + inside, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            XCTAssertGreaterThanOrEqual(fd, 0)
            let flags = nr_inode_flags(fd)
            let set = flags >= 0 ? nr_set_inode_flags(fd, flags | flag) : -1
            let why = errnoText()
            close(fd)
            try XCTSkipIf(set != 0, "the file system of \(root) refuses FS_IOC_GETFLAGS/SETFLAGS (\(why))")
            let released = await workspace.release(path: path)
            XCTAssertTrue(released, what)
            XCTAssertFalse(pathExists(path), "\(what): removed")
            XCTAssertEqual(try names(workspace.directory), [], "\(what): not kept for the next job")
        }
    }

    /// A flag deeper inside than the folder and its `tmp` (`chattr +i tmp/deep/x`, or `chattr +a sub` holding a file)
    /// is not cleared: the folder stays, and its one warning names the first entry that could not be removed and why.
    func testAFolderLeftBehindByADeepFlagIsReportedWithTheReason() async throws {
        try XCTSkipIf(geteuid() != 0, "setting the immutable and append-only flags needs root (CAP_LINUX_IMMUTABLE)")
        final class Lines: Sendable {
            let lines = Mutex<[String]>([])
        }
        let host = IsolationHost(
            configuration: IsolationConfiguration(
                defaultLevel: .processGroup, fallback: false, defaultLimits: JobLimits(), ceilings: JobLimits()),
            capabilities: IsolationCapabilities(
                processGroup: .available, namespaces: .available, networkNamespace: .available, runAs: .available),
            cgroups: nil, cgroupUnavailable: "no cgroup driver", workspace: workspace, hostMemoryBytes: nil)
        let entry = try JobEntry(
            streamId: "5-1", queue: "default",
            fields: [("id", Array("j".utf8)), ("spec", Array(#"{"argv":["x"]}"#.utf8))])
        let cases: [(flagged: String, reported: String, flag: Int32, what: String)] = [
            ("/tmp/deep/x", "/tmp/deep/x", NR_FS_IMMUTABLE_FL, "chattr +i tmp/deep/x"),
            ("/sub", "/sub/f", NR_FS_APPEND_FL, "chattr +a sub"),
        ]
        for (flagged, reported, flag, what) in cases {
            let containment = try await JobContainment.create(plan: try host.plan(for: entry).get(), host: host)
            let path = containment.workDirectory
            for folder in ["/tmp/deep", "/sub"] {
                try FileManager.default.createDirectory(atPath: path + folder, withIntermediateDirectories: true)
            }
            for file in ["/tmp/deep/x", "/sub/f"] {
                XCTAssertTrue(FileManager.default.createFile(atPath: path + file, contents: Data("x".utf8)))
            }
            let fd = open(path + flagged, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
            XCTAssertGreaterThanOrEqual(fd, 0)
            defer { close(fd) }
            let flags = nr_inode_flags(fd)
            let set = flags >= 0 ? nr_set_inode_flags(fd, flags | flag) : -1
            try XCTSkipIf(set != 0, "the file system of \(root) refuses FS_IOC_GETFLAGS/SETFLAGS (\(errnoText()))")
            let sink = Lines()
            let logger = Logger(label: "runner", level: .debug, format: .text) { line in
                sink.lines.withLock { $0.append(line) }
            }
            await containment.discard(logger: logger)
            XCTAssertEqual(nr_clear_locking_flags(fd), 1, what)
            XCTAssertTrue(pathExists(path), "\(what): left behind")
            let warnings = sink.lines.withLock { $0 }.filter { $0.contains("could not remove the job's work folder") }
            XCTAssertEqual(warnings.count, 1, "\(what): \(warnings)")
            XCTAssertTrue(
                warnings.first?.contains(
                    "could not remove the job's work folder: \(path + reported): Operation not permitted (it may be "
                        + "immutable, or its folder append-only: chattr +i or +a) path=\(path)") == true,
                "\(what): \(warnings)")
            try FileManager.default.removeItem(atPath: path)
        }
    }

    func testASpareRemovedMeanwhileFallsBackToANewFolder() async throws {
        let first = try await workspace.create(name: "job-a")
        let released = await workspace.release(path: first)
        XCTAssertTrue(released)
        try FileManager.default.removeItem(atPath: workspace.directory + "/.spare-1")
        let second = try await workspace.create(name: "job-b")
        XCTAssertEqual(try names(second), ["tmp"])
        XCTAssertEqual(try names(workspace.directory), ["job-b"])
    }
}

final class IsolationPlanTests: XCTestCase {
    private func host(
        namespaces: Bool = true, network: Bool = true, cgroups: Bool = false, fallback: Bool = false,
        defaults: JobLimits = JobLimits(), ceilings: JobLimits = JobLimits(), memory: UInt64? = 8 << 30
    ) -> IsolationHost {
        let missing = IsolationCapabilities.Support.missing(reason: "clone failed: Operation not permitted")
        return IsolationHost(
            configuration: IsolationConfiguration(
                defaultLevel: .processGroup, fallback: fallback, defaultLimits: defaults, ceilings: ceilings),
            capabilities: IsolationCapabilities(
                processGroup: .available, namespaces: namespaces ? .available : missing,
                networkNamespace: network ? .available : missing, runAs: .available),
            cgroups: cgroups ? FakeDriver() : nil, cgroupUnavailable: cgroups ? nil : "no memory controller",
            workspace: JobWorkspace(root: "/tmp/unused", runner: "r", owner: nil), hostMemoryBytes: memory)
    }

    private func entry(_ spec: String) throws -> JobEntry {
        try JobEntry(
            streamId: "5-1", queue: "default",
            fields: [("id", Array("j".utf8)), ("spec", Array(spec.utf8))])
    }

    private func refusal(_ host: IsolationHost, _ spec: String) throws -> String? {
        if case .failure(let error) = host.plan(for: try entry(spec)) { return error.message }
        return nil
    }

    func testDefaultsAndNetworkNoneRaisesTheLevel() throws {
        let plan = try host().plan(for: try entry(#"{"argv":["x"]}"#)).get()
        XCTAssertEqual(plan.level, .processGroup)
        XCTAssertTrue(plan.contextName.hasPrefix("job-5-1-") && plan.contextName.hasSuffix("-j"), plan.contextName)
        let isolated = try host().plan(for: try entry(#"{"argv":["x"],"network":"none"}"#)).get()
        XCTAssertEqual(isolated.level, .namespace)
        XCTAssertEqual(isolated.network, NetworkMode.none)
    }

    /// The same rule as for `network: none`: a cgroup limit without a named level asks for `cgroup`, so a
    /// `process_group` runner neither rejects it for its own default nor runs it without the limit.
    func testACgroupLimitWithoutANamedLevelRaisesTheLevelToCgroup() throws {
        for limits in [#"{"memory_bytes":67108864}"#, #"{"pids":5}"#, #"{"cpu_millis":500}"#] {
            let spec = #"{"argv":["x"],"limits":\#(limits)}"#
            XCTAssertNil(try refusal(host(cgroups: true), spec), limits)
            let plan = try host(cgroups: true).plan(for: try entry(spec)).get()
            XCTAssertEqual(plan.level, .cgroup, limits)
            XCTAssertEqual(plan.requested, .cgroup, limits)
            XCTAssertFalse(plan.fellBack, limits)
        }
        let both = try host(cgroups: true).plan(
            for: try entry(#"{"argv":["x"],"network":"none","limits":{"pids":5}}"#)
        ).get()
        XCTAssertEqual(both.level, .cgroup)
        XCTAssertEqual(both.network, NetworkMode.none)
        // An rlimit needs no level of its own.
        XCTAssertEqual(
            try host().plan(for: try entry(#"{"argv":["x"],"limits":{"open_files":50}}"#)).get().level, .processGroup)
        // Where cgroups are missing it is the level that is refused, not the runner's default.
        XCTAssertEqual(
            try refusal(host(), #"{"argv":["x"],"limits":{"pids":5}}"#),
            "cgroup isolation is not available: no memory controller")
        XCTAssertEqual(
            IsolationShortfall.least(for: .none, limits: JobLimits(openFiles: 5)), .namespace)
        XCTAssertEqual(IsolationShortfall.least(for: .host, limits: JobLimits(cpuMillis: 5)), .cgroup)
    }

    func testMissingFeaturesAreRejectedWithTheReasonUnlessFallingBack() throws {
        XCTAssertEqual(
            try refusal(host(namespaces: false), #"{"argv":["x"],"isolation":"namespace"}"#),
            "namespace isolation is not available: clone failed: Operation not permitted")
        XCTAssertEqual(
            try refusal(host(), #"{"argv":["x"],"isolation":"cgroup"}"#),
            "cgroup isolation is not available: no memory controller")
        let fell = try host(fallback: true).plan(
            for: try entry(#"{"argv":["x"],"isolation":"cgroup","limits":{"memory_bytes":4194304}}"#)
        ).get()
        XCTAssertEqual(fell.level, .namespace)
        XCTAssertEqual(fell.requested, .cgroup)
        XCTAssertNil(fell.limits.memoryBytes, "a limit nothing enforces is not in force")
        let noNet = try host(network: false, fallback: true).plan(
            for: try entry(#"{"argv":["x"],"isolation":"namespace","network":"none"}"#)
        ).get()
        XCTAssertEqual(noNet.level, .namespace)
        XCTAssertEqual(noNet.network, .host)
        XCTAssertTrue(noNet.fellBack, "the network was not given")
    }

    func testLimitsCeilingsAndHostMemory() throws {
        XCTAssertEqual(
            try refusal(host(), #"{"argv":["x"],"isolation":"process_group","limits":{"pids":5}}"#),
            #"limits.pids needs isolation "cgroup", not "process_group""#)
        let capped = host(cgroups: true, ceilings: JobLimits(pids: 10))
        XCTAssertEqual(
            try refusal(capped, #"{"argv":["x"],"isolation":"cgroup","limits":{"pids":50}}"#),
            "limits.pids 50 is above this runner's ceiling of 10")
        XCTAssertEqual(
            try refusal(
                host(cgroups: true, memory: 1 << 20),
                #"{"argv":["x"],"isolation":"cgroup","limits":{"memory_bytes":2097152}}"#),
            "limits.memory_bytes 2097152 is more than this host's memory of 1048576 bytes")
        let defaulted = try host(cgroups: true, defaults: JobLimits(memoryBytes: 64 << 20, pids: 100)).plan(
            for: try entry(#"{"argv":["x"],"isolation":"cgroup","limits":{"pids":7,"open_files":50}}"#)
        ).get()
        XCTAssertEqual(defaulted.limits, JobLimits(memoryBytes: 64 << 20, pids: 7, openFiles: 50))
        // Rlimits apply at every level.
        XCTAssertEqual(
            try host().plan(for: try entry(#"{"argv":["x"],"limits":{"open_files":50}}"#)).get().limits,
            JobLimits(openFiles: 50))
    }
}

final class DeadRunnerContextNameTests: XCTestCase {
    /// Only a name that is exactly a runner's context name of this namespace and pool maps back to a runner.
    func testAContextNameMapsBackToItsRunnerOnlyWhenExact() {
        let pool = "0123456789abcdef"
        func runner(_ name: String) -> String? {
            DeadRunnerContexts.runner(ofContext: name, namespace: "nr", pool: pool, own: "me")
        }
        XCTAssertEqual(runner(runnerContextName(namespace: "nr", runner: "host-42", pool: pool)), "host-42")
        XCTAssertEqual(runner("nr.a.b.01234567"), "a.b")
        XCTAssertNil(runner("nr.me.01234567"), "its own")
        XCTAssertNil(runner("nr2.x.01234567"), "another namespace")
        XCTAssertNil(runner("nr.x.76543210"), "another pool")
        XCTAssertNil(runner("nr..01234567"))
        XCTAssertNil(runner(".spare-1"))
        // A sanitised name carries a hash: it cannot be the exact name of any runner.
        let sanitised = runnerContextName(namespace: "nr", runner: "a b", pool: pool)
        XCTAssertNil(runner(sanitised))
    }
}

/// A driver that is never asked to do anything: planning only checks that there is one.
private struct FakeDriver: CgroupDriver {
    var version: CgroupVersion { .v2 }
    var parentDirectories: [String] { [] }
    func prepareParent() throws(CgroupError) -> CgroupPreparation {
        CgroupPreparation(parentDirectories: [], controllers: [], missingControllers: [])
    }
    func create(name: String, limits: CgroupLimits) throws(CgroupError) -> JobCgroup {
        JobCgroup(name: name, directories: [])
    }
    func procsFiles(_ job: JobCgroup) -> [String] { [] }
    func usage(_ job: JobCgroup) throws(CgroupError) -> CgroupUsage { CgroupUsage() }
    func kill(_ job: JobCgroup, deadline: ContinuousClock.Instant) async throws(CgroupError) {}
    func remove(_ job: JobCgroup, deadline: ContinuousClock.Instant) async throws(CgroupError) {}
    func jobCgroups(namePrefix: String) throws(CgroupError) -> [JobCgroup] { [] }
    func siblingParentNames() -> [String] { [] }
    func sibling(parentName name: String) -> (any CgroupDriver)? { nil }
    func members(of job: JobCgroup) throws(CgroupError) -> [Int32] { [] }
    func parentModificationTime() -> Double? { nil }
    func touchParent() {}
}

final class MemoryAdmissionTests: XCTestCase {
    private func key(_ streamId: String, queue: String = "default") -> DeliveryKey {
        DeliveryKey(queue: queue, streamId: streamId)
    }

    func testAJobWaitsUntilTheMemoryIsThereAndIsReported() async {
        let available = Mutex<UInt64>(100)
        let changes = Mutex(0)
        let admission = MemoryAdmission(
            totalBytes: 1000, availableBytes: { available.withLock { $0 } }, changed: { changes.withLock { $0 += 1 } })
        let first = await admission.admit(key: key("a"), bytes: 80, interval: .milliseconds(5))
        XCTAssertTrue(first)
        let (b, c) = (key("b"), key("c"))
        let waiter = Task { await admission.admit(key: b, bytes: 500, interval: .milliseconds(5)) }
        let reportedWaiting = await pollUntil { await admission.waiting == [b: 500] }
        XCTAssertTrue(reportedWaiting)
        available.withLock { $0 = 600 }
        let admitted = await waiter.value
        XCTAssertTrue(admitted)
        let waitingAfter = await admission.waiting
        XCTAssertEqual(waitingAfter, [:])
        let reserved = await admission.reservedBytes
        XCTAssertEqual(reserved, 580)
        XCTAssertEqual(changes.withLock { $0 }, 2, "once when it began to wait, once when it stopped")
        // More than the total less what is reserved waits even when the host shows it free.
        let blocked = Task { await admission.admit(key: c, bytes: 500, interval: .milliseconds(5)) }
        let waitsForTotal = await pollUntil { await admission.waiting[c] == 500 }
        XCTAssertTrue(waitsForTotal)
        blocked.cancel()
        let cancelled = await blocked.value
        XCTAssertFalse(cancelled)
        await admission.release(key: key("b"))
        let left = await admission.reservedBytes
        XCTAssertEqual(left, 80)
    }

    private func pollUntil(_ condition: @Sendable () async -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            if await condition() { return true }
            try? await Task.sleep(for: .milliseconds(2))
        }
        return false
    }
    func testEntriesOfTheSameIdInTwoQueuesReserveApart() async {
        let admission = MemoryAdmission(totalBytes: 1000, availableBytes: { 1000 })
        let first = await admission.admit(key: key("5-0", queue: "qa"), bytes: 300)
        let second = await admission.admit(key: key("5-0", queue: "qb"), bytes: 400)
        XCTAssertTrue(first && second)
        let both = await admission.reservedBytes
        XCTAssertEqual(both, 700)
        await admission.release(key: key("5-0", queue: "qa"))
        let left = await admission.reservedBytes
        XCTAssertEqual(left, 400, "the other queue's job still holds its memory")
    }
}

final class WorkspaceSafetyTests: XCTestCase {
    private var root = ""

    override func setUp() {
        root = NSTemporaryDirectory() + "nr-safety-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: root)
    }

    private func refusal(_ workspace: JobWorkspace, _ name: String) async -> String? {
        do {
            _ = try await workspace.create(name: name)
            return nil
        } catch {
            return error.message
        }
    }

    func testADirectoryOthersCanWriteToOrALinkIsRefused() async throws {
        let workspace = JobWorkspace(root: root, runner: "r", owner: nil)
        try FileManager.default.createDirectory(atPath: root + "/r", withIntermediateDirectories: true)
        chmod(root + "/r", 0o777)
        let open = await refusal(workspace, "job-1-0-a")
        XCTAssertEqual(open, "the work folder \(root)/r is not safe to use: others can write to it (mode 777)")
        try FileManager.default.removeItem(atPath: root + "/r")
        let elsewhere = root + "-target"
        defer { try? FileManager.default.removeItem(atPath: elsewhere) }
        try FileManager.default.createDirectory(atPath: elsewhere, withIntermediateDirectories: true)
        XCTAssertEqual(symlink(elsewhere, root + "/r"), 0)
        let linked = await refusal(workspace, "job-1-0-a")
        XCTAssertEqual(linked, "the work folder \(root)/r is not safe to use: it is a symbolic link")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: elsewhere), [])
    }

    func testAPlantedJobFolderLinkIsReplacedNotFollowed() async throws {
        let workspace = JobWorkspace(root: root, runner: "r", owner: (uid: 65534, gid: 65534))
        _ = try await workspace.create(name: "job-1-0-a")
        let target = root + "-victim"
        defer { try? FileManager.default.removeItem(atPath: target) }
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        XCTAssertEqual(symlink(target, root + "/r/job-2-0-b"), 0)
        let path = try await workspace.create(name: "job-2-0-b")
        var info = stat()
        XCTAssertEqual(lstat(path, &info), 0)
        XCTAssertEqual(info.st_mode & S_IFMT, S_IFDIR, "a real folder now")
        XCTAssertEqual(stat(target, &info), 0)
        XCTAssertEqual(info.st_uid, 0, "the link's target was not handed to the job's user")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: target), [])
    }
}

final class LeaseEpochTests: XCTestCase {
    func testAnEpochEndsOnceWhoeverAsks() async {
        let epoch = LeaseEpoch(owner: AttemptOwner(runner: "r", leaseToken: "t"), number: 1, killDeadline: .now)
        let winners = await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<50 { group.addTask { epoch.beginEnding() } }
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        XCTAssertEqual(winners, 1)
        // A new epoch (maybe at the freed one's address) is ended on its own.
        let next = LeaseEpoch(owner: AttemptOwner(runner: "r", leaseToken: "u"), number: 2, killDeadline: .now)
        XCTAssertTrue(next.beginEnding())
    }
}

final class WorkspaceLeftoverSafetyTests: XCTestCase {
    func testLeftoversAreNeverListedThroughALinkAndPrepareRefusesIt() async throws {
        let root = NSTemporaryDirectory() + "nr-left-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let victim = root + "-victim"
        defer {
            try? FileManager.default.removeItem(atPath: root)
            try? FileManager.default.removeItem(atPath: victim)
        }
        try FileManager.default.createDirectory(atPath: victim + "/sub", withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: victim + "/f", contents: Data("keep".utf8))
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        XCTAssertEqual(symlink(victim, root + "/r"), 0)
        let workspace = JobWorkspace(root: root, runner: "r", owner: nil)
        let leftovers = await workspace.leftovers(keeping: [])
        XCTAssertEqual(leftovers, [])
        do {
            try await workspace.prepare()
            XCTFail("a linked runner folder was accepted")
        } catch {
            XCTAssertEqual(error.message, "the work folder \(root)/r is not safe to use: it is a symbolic link")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: victim).sorted(), ["f", "sub"])
    }
}
