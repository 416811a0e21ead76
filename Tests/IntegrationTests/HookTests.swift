import Foundation
import RedisClient
import TestSupport
import XCTest

/// `--hook-pre-job` and `--hook-post-job`: what they see, what their failure does, their timeout.
final class HookTests: IntegrationTestCase {
    private var folder: URL!

    override func setUpWithError() throws {
        try super.setUpWithError()
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("hooks-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        // Hooks run as the job's user: let them write their traces here.
        chmod(folder.path, 0o777)
    }

    override func tearDownWithError() throws {
        try super.tearDownWithError()
        try? FileManager.default.removeItem(at: folder)
    }

    /// An executable shell script in the test's folder.
    private func hook(_ name: String, _ body: String) throws -> String {
        let path = folder.appendingPathComponent(name).path
        try ("#!/bin/sh\n" + body + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o755)
        return path
    }

    private func exists(_ name: String) -> Bool {
        FileManager.default.fileExists(atPath: folder.appendingPathComponent(name).path)
    }

    /// A cancel that comes while the pre-job hook runs stops the hook and ends the job cancelled there and then: it
    /// was handed back as 'runner shutting down', to the end of its queue, and cancelled at its next claim (found by
    /// breaker19b).
    func testACancelDuringThePreJobHookEndsTheJobCancelled() throws {
        let pre = try hook("pre", "touch '\(folder.path)/hook-started'; sleep 30")
        try startRunner(["--no-reaper", "--hook-pre-job", pre, "--kill-grace", "1s"])
        try submit(["--", "touch", folder.path + "/ran"], id: "hc-1")
        XCTAssertTrue(waitUntil(timeout: .seconds(20)) { self.exists("hook-started") })
        let cancel = cli(["cancel", "hc-1", "--wait", "--wait-timeout", "20s"])
        XCTAssertEqual(cancel.code, 0, cancel.err)
        let record = try waitForState("hc-1", ["cancelled"])
        XCTAssertTrue(record["reason"]?.hasPrefix("cancelled by ") == true, record["reason"] ?? "")
        XCTAssertFalse(exists("ran"), "the job ran although it was cancelled during its pre-job hook")
        let types = try events(of: "hc-1")
        XCTAssertFalse(types.contains("job.handed_back"), "\(types)")
        XCTAssertEqual(types.filter { $0 == "job.cancelled" }.count, 1, "\(types)")
        XCTAssertEqual(try logBytes("hc-1").meta.last, "pre-job hook stopped: the job was cancelled")
    }

    func testAFailingPreJobHookFailsTheAttemptWithoutRunningTheJobAndRetriesApply() throws {
        let pre = try hook(
            "pre", #"echo "pre-hook of $NR_JOB_ID attempt $NR_ATTEMPT"; [ "$NR_ATTEMPT" = 2 ] || exit 3"#)
        try startRunner(["--no-reaper", "--hook-pre-job", pre])
        let marker = folder.path + "/ran-"
        try submit(["--", "sh", "-c", "touch \(marker)$NR_ATTEMPT"], id: "once")
        let failed = try waitForState("once", ["failed"])
        XCTAssertEqual(failed["reason"], "pre-job hook exited 3")
        XCTAssertEqual(failed["exit_code"], "")
        XCTAssertFalse(exists("ran-1"), "the job ran although its pre-job hook failed")
        let log = try logBytes("once")
        XCTAssertEqual(String(decoding: log.stdout, as: UTF8.self), "pre-hook of once attempt 1\n")
        XCTAssertEqual(log.meta, ["pre-job hook \(pre) begins", "pre-job hook exited 3"])

        // With attempts left the failed hook is a failed attempt: the next one runs the hook again, then the job.
        try submit(
            ["--max-attempts", "2", "--backoff", "100ms", "--", "sh", "-c", "touch \(marker)$NR_ATTEMPT"], id: "twice")
        let succeeded = try waitForState("twice", ["succeeded"])
        XCTAssertEqual(succeeded["attempt"], "2")
        XCTAssertFalse(exists("ran-1"))
        XCTAssertTrue(exists("ran-2"))
        let scheduled = try XCTUnwrap(try events().first { $0.type == "job.retry_scheduled" && $0.job == "twice" })
        XCTAssertEqual(scheduled.data["reason"] as? String, "pre-job hook exited 3")
    }

    func testHooksSeeTheJobsEnvironmentAndWorkFolderAndThePostHookItsOutcome() throws {
        let pre = try hook(
            "pre",
            #"echo "$NR_JOB_ID $NR_ATTEMPT $NR_RUNNER $GREETING" > "$NR_WORK_DIR/pre-saw"; [ "$PWD" = "$NR_WORK_DIR" ]"#
        )
        let post = try hook(
            "post",
            #"echo "$NR_JOB_STATE $NR_EXIT_CODE $(cat pre-saw) $(cat job-saw)" > \#(folder.path)/post-saw; exit 5"#)
        try startRunner(name: "hooked", ["--no-reaper", "--hook-pre-job", pre, "--hook-post-job", post])
        try submit(["--env", "GREETING=hello", "--", "sh", "-c", "echo job > job-saw; exit 7"], id: "seen")
        let record = try waitForState("seen", ["failed"])
        XCTAssertEqual(record["exit_code"], "7")
        XCTAssertEqual(record["reason"], "exited with code 7", "a failing post-job hook does not change the outcome")
        XCTAssertEqual(record["post_hook_exit_code"], "5")
        let saw = try String(contentsOfFile: folder.path + "/post-saw", encoding: .utf8)
        XCTAssertEqual(saw, "failed 7 seen 1 hooked hello job\n")
        let failedEvent = try XCTUnwrap(try events().first { $0.type == "job.failed" && $0.job == "seen" })
        XCTAssertEqual(failedEvent.data["post_hook_exit_code"] as? Int, 5)

        try submit(["--", "true"], id: "fine")
        let fine = try waitForState("fine", ["succeeded"])
        XCTAssertEqual(fine["post_hook_exit_code"], "5")
        XCTAssertEqual(
            try String(contentsOfFile: folder.path + "/post-saw", encoding: .utf8).prefix(12), "succeeded 0 ")
    }

    func testAHookPastItsTimeoutIsKilledWithItsTreeAndFailsTheJob() throws {
        let pre = try hook("pre", "sleep 60 & echo $! > \(folder.path)/child; sleep 60")
        try startRunner(["--no-reaper", "--hook-pre-job", pre, "--hook-timeout", "500ms", "--kill-grace", "200ms"])
        try submit(["--", "touch", folder.path + "/ran"], id: "slow")
        let record = try waitForState("slow", ["failed"], timeout: .seconds(15))
        XCTAssertEqual(record["reason"], "pre-job hook timed out after 500ms")
        XCTAssertFalse(exists("ran"))
        let child = try XCTUnwrap(
            Int32(
                try String(contentsOfFile: folder.path + "/child", encoding: .utf8).trimmingCharacters(
                    in: .whitespacesAndNewlines)))
        XCTAssertTrue(
            waitUntil(timeout: .seconds(5)) { !processIsAlive(child) }, "the hook's child \(child) outlived it")
    }

    func testAMissingOrNonExecutableHookIsAUsageErrorNamingIt() throws {
        let missing = folder.path + "/nope"
        var result = cli(["worker", "--hook-pre-job", missing])
        XCTAssertEqual(result.code, 2)
        XCTAssertTrue(result.err.contains("'--hook-pre-job': '\(missing)' does not exist"), result.err)
        let plain = folder.appendingPathComponent("plain").path
        FileManager.default.createFile(atPath: plain, contents: Data("x".utf8))
        result = cli(["worker", "--hook-post-job", plain])
        XCTAssertEqual(result.code, 2)
        XCTAssertTrue(result.err.contains("'--hook-post-job': '\(plain)' is not an executable file"), result.err)
        result = cli(["worker", "--label", "gpu"])
        XCTAssertEqual(result.code, 2)
        XCTAssertTrue(result.err.contains("invalid value for '--label': 'gpu' is not KEY=VALUE"), result.err)
    }

    /// Hooks run as the --run-as user: a hook only root may run (mode 700), or one in a folder that user cannot
    /// enter, passed the start check and then failed every job (found by breaker19b). It is refused at start; the
    /// same file world-executable, in a folder the user may enter, passes (the worker then fails on the Redis this
    /// test gives it, exit 1).
    func testAHookTheRunAsUserCannotExecuteIsAUsageError() throws {
        try XCTSkipUnless(getuid() == 0, "--run-as needs the runner to run as root")
        let open = FileManager.default.temporaryDirectory.appendingPathComponent("hooks-open-\(namespace)")
        let closed = open.appendingPathComponent("closed")
        try FileManager.default.createDirectory(at: closed, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: open) }
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: open.path)
        try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: closed.path)
        func hook(_ path: String, mode: Int) throws -> String {
            FileManager.default.createFile(atPath: path, contents: Data("#!/bin/sh\necho pre\n".utf8))
            try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
            return path
        }
        let ownerOnly = try hook(open.path + "/owner-only.sh", mode: 0o700)
        let inClosedFolder = try hook(closed.path + "/hook.sh", mode: 0o755)
        let executeOnly = try hook(open.path + "/execute-only.sh", mode: 0o711)
        for path in [ownerOnly, inClosedFolder, executeOnly] {
            let result = runCLI(["worker", "--redis", "127.0.0.1:1", "--run-as", "nobody", "--hook-pre-job", path])
            XCTAssertEqual(result.code, 2, "\(path): \(result.err)")
            XCTAssertEqual(
                result.err.split(separator: "\n").first.map(String.init),
                "Error: invalid value for '--hook-pre-job': '\(path)' is not executable by the --run-as user nobody "
                    + "(it and every folder above it need that user's x bit, a script its r bit too)")
        }
        let usable = try hook(open.path + "/usable.sh", mode: 0o755)
        let result = runCLI(["worker", "--redis", "127.0.0.1:1", "--run-as", "nobody", "--hook-pre-job", usable])
        XCTAssertEqual(result.code, 1, result.err)
        XCTAssertTrue(result.err.contains("cannot reach Redis at 127.0.0.1:1"), result.err)
    }
}
