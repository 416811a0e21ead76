import Foundation
import ProcessSupervision
import RunnerProtocol
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
}

final class IsolationContextNameTests: XCTestCase {
    func testNamesAreSafeAndCarryTheStreamId() {
        let name = isolationContextName(jobId: "../../etc/passwd ü", streamId: "1700000000000-3")
        XCTAssertEqual(name, "job-1700000000000-3-______etc_passwd__")
        XCTAssertFalse(name.contains("/"))
        XCTAssertEqual(streamId(inContextName: name), "1700000000000-3")
        XCTAssertNil(streamId(inContextName: "supervisor"))
        XCTAssertNil(streamId(inContextName: "job-abc-1-x"))
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
}
