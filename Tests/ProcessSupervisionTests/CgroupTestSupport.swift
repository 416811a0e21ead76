import Foundation
import ProcessSupervision
import TestSupport
import XCTest

/// A name no other test run (or helper on the same host) uses for its cgroup parent.
func uniqueCgroupParentName() -> String {
    "nr-test-\(getpid())-\(UUID().uuidString.prefix(8).lowercased())"
}

/// Starts `script` under /bin/sh after the shell has written "0" into each of `procsFiles` (joining the job's cgroup
/// in every hierarchy before the payload's first instruction, as the spawn hook does), and (`waitUntilJoined`) waits
/// until the process is listed in all of them. Keep the process and wait for it: dropping it kills it.
func spawnInCgroup(
    _ procsFiles: [String], _ script: String, waitUntilJoined: Bool = true
) async throws -> RunningProcess {
    let join = procsFiles.map { "echo 0 > '\($0)' || exit 125; " }.joined()
    let spec = ProcessSpec(
        executable: "/bin/sh", arguments: ["sh", "-c", join + "exec /bin/sh -c \"$0\"", script],
        environment: ["PATH": testPath])
    let process = try await Shared.supervisor.spawn(spec) { _, _ in }
    guard waitUntilJoined else { return process }
    let joined = waitUntil(timeout: .seconds(5)) {
        procsFiles.allSatisfy { cgroupMembers(ofProcsFile: $0).contains(process.pid) }
    }
    if !joined {
        _ = await process.wait(TerminationPolicy(killGrace: .zero))
        throw CgroupError(code: .writeFailed, path: procsFiles.joined(separator: " "), message: "the job did not join")
    }
    return process
}

/// The pids a cgroup.procs lists now.
func cgroupMembers(ofProcsFile path: String) -> [Int32] {
    ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { Int32($0) }
}

/// The first line of a cgroup file, trimmed.
func cgroupValue(_ directory: String, _ file: String) -> String? {
    (try? String(contentsOfFile: directory + "/" + file, encoding: .utf8))?.trimmingCharacters(
        in: .whitespacesAndNewlines)
}

/// Kills and removes every job cgroup under the driver's parent, then the parent itself: what a test made is gone
/// even when it failed half way.
func removeEverything(under driver: any CgroupDriver) async {
    for job in (try? driver.jobCgroups(namePrefix: "")) ?? [] {
        do {
            try await driver.killAndRemove(job, deadline: .now + .seconds(10))
        } catch {
            XCTFail("cleanup of \(job.name): \(error)")
        }
    }
    for directory in driver.parentDirectories {
        try? LiveCgroupFileSystem().removeDirectory(directory)
    }
}
