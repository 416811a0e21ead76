import Foundation
import RedisClient
import TestSupport
import XCTest

/// The ACL users docs/operations.md gives (runner, control plane, viewer) are enough for what each does, and keep
/// each from what it must not do: the lines are read from the document and applied to a redis-server of its own.
final class RedisACLTests: PrivateRedisTestCase {
    private func endpoint(user: String, password: String) -> RedisEndpoint {
        RedisEndpoint(host: endpoint.host, port: endpoint.port, username: user, password: password)
    }

    /// `runner SUBCOMMAND ...` as the given endpoint (user).
    private func cli(_ arguments: [String], as user: RedisEndpoint) -> CLIResult {
        runCLI([arguments[0], "--redis", user.url, "--namespace", namespace] + arguments.dropFirst())
    }

    func testTheDocumentedUsersCanDoTheirWorkAndNoMore() throws {
        guard Python.require(["redis"]) else { return }
        let document = try String(
            contentsOf: Python.root.appendingPathComponent("docs/operations.md"), encoding: .utf8)
        let lines = document.split(separator: "\n").filter { $0.hasPrefix("ACL SETUSER ") }
        XCTAssertEqual(lines.count, 3, "docs/operations.md gives three ACL users")
        for line in lines {
            let argv = line.replacingOccurrences(of: "{nr}", with: "{\(namespace)}").split(separator: " ").map(
                String.init)
            XCTAssertEqual(try send(argv).string, "OK", String(line))
        }
        let runner = endpoint(user: "nr-runner", password: "runner-secret")
        let control = endpoint(user: "nr-control", password: "control-secret")
        let viewer = endpoint(user: "nr-viewer", password: "viewer-secret")

        // A Python control plane as nr-control reschedules what a killed runner (nr-runner, no reaper) held.
        let hold = FileManager.default.temporaryDirectory.appendingPathComponent("acl-hold-\(namespace)")
        defer { try? FileManager.default.removeItem(at: hold) }
        let options = ["--no-reaper", "--lease-ttl", "1s"]
        let first = try startRunner(name: "acl-a", options, redisEndpoint: runner)
        let second = try startRunner(name: "acl-b", options, redisEndpoint: runner)
        let python = try Python.start([
            "-u", "scripts/examples/control_plane.py", "--redis", control.url, "--jobs", "5", "--namespace", namespace,
            "--hold", hold.path, "--id-prefix", "acl", "--timeout", "60",
        ])
        _ = try runningPid("acl-1")
        let victim = try job("acl-1")["runner"] == first.name ? first : second
        victim.signal(SIGKILL)
        XCTAssertNotNil(victim.waitForExit(timeout: 10))
        FileManager.default.createFile(atPath: hold.path, contents: nil)
        XCTAssertEqual(python.waitForExit(timeout: 90), 0, python.output)
        let summary = python.output.split(separator: "\n").last ?? ""
        XCTAssertTrue(summary.hasPrefix("succeeded=5 failed=0 lost=0 rescheduled="), python.output)
        XCTAssertGreaterThanOrEqual(Int(summary.split(separator: "=").last ?? "") ?? 0, 1, python.output)

        // Runners with their reaper, and runner control, as nr-runner; the CLI as nr-control.
        try startRunner(name: "acl-c", ["--reaper-interval", "200ms"], redisEndpoint: runner)
        let reaper = try RunnerUnderTest(
            endpoint: runner, namespace: namespace, name: "acl-control", subcommand: "control",
            arguments: ["--interval", "200ms"])
        runners.append(reaper)
        let submitted = cli(["submit", "--wait", "--id", "ok-1", "--", "echo", "fine"], as: control)
        XCTAssertEqual(submitted.code, 0, submitted.err)
        XCTAssertEqual(submitted.stdout, "fine\n")
        let failing = cli(
            ["submit", "--wait", "--id", "no-1", "--max-attempts", "2", "--backoff", "100ms", "--shell", "exit 3"],
            as: control)
        XCTAssertEqual(failing.code, 3, failing.err)
        XCTAssertEqual(try job("no-1")["state"], "dead")
        let retried = cli(["retry", "no-1"], as: control)
        XCTAssertEqual(retried.code, 0, retried.err)
        try waitForState("no-1", ["dead"])
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { (try? self.send(["EXISTS", self.key("reaper")]).int) == 1 })

        // The viewer reads; it cannot submit.
        for arguments in [["status"], ["result", "ok-1"], ["logs", "ok-1"], ["events", "--count", "5"], ["dead"]] {
            let read = cli(arguments, as: viewer)
            XCTAssertEqual(read.code, 0, "\(arguments): \(read.err)")
        }
        let refused = cli(["submit", "--", "echo", "no"], as: viewer)
        XCTAssertEqual(refused.code, 1)
        XCTAssertTrue(refused.err.contains("NOPERM"), refused.err)

        // What each must not do: the control plane cannot take a lease, no user reaches another namespace.
        for (user, key) in [(control, key("runner:acl-c")), (runner, "{other}:runner:x"), (control, "{other}:jobs:q")] {
            let connection = try RedisConnection(endpoint: user, connectTimeout: .seconds(2), readTimeout: .seconds(5))
            let reply = try connection.send(RedisCommand(["SET", key, "x"]))
            guard case .error(let message) = reply, message.hasPrefix("NOPERM") else {
                XCTFail("\(user.username ?? "") could SET \(key): \(reply)")
                continue
            }
        }
        // No runner wrote anything it was refused (the ACL log has only the refusals above and CONFIG GET).
        let log = try send(["ACL", "LOG", "100"]).array ?? []
        let refusals = log.map { strings($0) }.filter { !($0["object"] ?? "").hasPrefix("config") }
        XCTAssertEqual(refusals.count, 4, "\(refusals.map { "\($0["username"] ?? "") \($0["object"] ?? "")" })")
        for runnerUnderTest in runners where runnerUnderTest.isRunning && runnerUnderTest !== victim {
            let refused = runnerUnderTest.log.split(separator: "\n").filter {
                $0.contains("NOPERM") && !$0.contains("'config|get'")
            }
            XCTAssertEqual(refused, [], runnerUnderTest.name)
        }
    }

    /// A control plane whose user may not run scripts can reschedule nothing: it says so and exits 1 at start,
    /// as a worker does, rather than run on with a reaper whose every pass fails.
    func testAControlPlaneRefusedItsScriptsFailsAtStart() throws {
        XCTAssertEqual(
            try send(["ACL", "SETUSER", "nr-noscript", "on", ">noscript-secret", "~*", "&*", "+@all", "-evalsha"])
                .string, "OK")
        let user = endpoint(user: "nr-noscript", password: "noscript-secret")
        let control = runCLI(
            ["control", "--redis", user.url, "--namespace", namespace, "--interval", "200ms"], timeout: 30)
        XCTAssertEqual(control.code, 1, control.err)
        let lines = control.err.split(separator: "\n").filter { !$0.contains(" [control] ") }
        XCTAssertEqual(
            lines, ["Error: Redis refuses the control plane its scripts: NOPERM this user has no permissions to run "
                + "the 'evalsha' command (its user needs what docs/operations.md gives nr-runner)"], control.err)

        // A user that may run scripts but not write the reaper's keys (as the documented nr-control, meant for
        // submitters and the Python control plane) is refused at start too.
        XCTAssertEqual(
            try send([
                "ACL", "SETUSER", "nr-readonly", "on", ">readonly-secret", "%R~*", "%RW~{\(namespace)}:events", "&*",
                "+@all",
            ]).string, "OK")
        let readonlyUser = endpoint(user: "nr-readonly", password: "readonly-secret")
        let readonly = runCLI(["control", "--redis", readonlyUser.url, "--namespace", namespace], timeout: 30)
        XCTAssertEqual(readonly.code, 1, readonly.err)
        XCTAssertEqual(
            readonly.err.split(separator: "\n").filter { !$0.contains(" [control] ") },
            ["Error: Redis refuses the control plane its scripts: NOPERM this user has no permissions to access one of "
                + "the keys used as arguments (its user needs what docs/operations.md gives nr-runner)"], readonly.err)
    }
}
