import CRunnerShims
import Foundation
import XCTest

@testable import ProcessSupervision

/// The capability probe, and the names the failing steps are reported with.
final class CapabilityTests: XCTestCase {
    func testTheProbeAgreesWithWhatSpawningDoes() async throws {
        let capabilities = await IsolationCapabilities.probe()
        XCTAssertEqual(capabilities.processGroup, .available)
        let probes: [(IsolationCapabilities.Support, ProcessIsolation)] = [
            (capabilities.namespaces, ProcessIsolation(level: .namespace, hostname: "probe-check")),
            (
                capabilities.networkNamespace,
                ProcessIsolation(level: .namespace, namespaces: .init(isolatesNetwork: true))
            ),
            (capabilities.runAs, ProcessIsolation(credentials: .init(uid: 65534, gid: 65534))),
            (capabilities.capabilityDrop, ProcessIsolation(level: .processGroup, dropsCapabilities: true)),
        ]
        for (support, isolation) in probes {
            let spec = ProcessSpec(
                executable: "/bin/true", arguments: ["true"], workingDirectory: "/", isolation: isolation)
            do {
                let (outcome, _) = try await runToEnd(spec)
                XCTAssertEqual(outcome.termination, .exited(0))
                XCTAssertEqual(support, .available, "the probe says missing, yet \(isolation) works")
            } catch let error as SpawnError {
                let step = try XCTUnwrap(error.step?.description)
                XCTAssertTrue(support.reason?.hasPrefix(step) == true, "probe: \(support); spawn: \(error.message)")
            }
        }
        XCTAssertEqual(capabilities.runAs.isAvailable, geteuid() == 0)
        if geteuid() == 0 {
            XCTAssertEqual(capabilities.capabilityDrop, .available)
        }
        let again = await IsolationCapabilities.probe()
        XCTAssertEqual(again, capabilities)
    }

    func testMissingNamesTheFeatureAndTheReason() {
        let capabilities = IsolationCapabilities(
            processGroup: .available,
            namespaces: .available,
            networkNamespace: .missing(reason: "clone failed: Operation not permitted"),
            runAs: .missing(reason: "the runner does not run as root (euid 1000)")
        )
        XCTAssertNil(capabilities.missing(for: ProcessIsolation(level: .none)))
        XCTAssertNil(capabilities.missing(for: ProcessIsolation(level: .namespace)))
        XCTAssertEqual(
            capabilities.missing(for: ProcessIsolation(level: .namespace, namespaces: .init(isolatesNetwork: true))),
            "an isolated network is not available: clone failed: Operation not permitted"
        )
        XCTAssertEqual(
            capabilities.missing(for: ProcessIsolation(level: .none, credentials: .init(uid: 1, gid: 1))),
            "running as another user is not available: the runner does not run as root (euid 1000)"
        )

        // `.namespace` drops capabilities unless told otherwise; the other levels only when told.
        let noDrop = IsolationCapabilities(
            processGroup: .available, namespaces: .available, networkNamespace: .available, runAs: .available,
            capabilityDrop: .missing(reason: "prctl(PR_CAPBSET_DROP) failed: Operation not permitted"))
        let reason = "dropping capabilities is not available: prctl(PR_CAPBSET_DROP) failed: Operation not permitted"
        XCTAssertEqual(noDrop.missing(for: ProcessIsolation(level: .namespace)), reason)
        XCTAssertNil(noDrop.missing(for: ProcessIsolation(level: .namespace, dropsCapabilities: false)))
        XCTAssertNil(noDrop.missing(for: ProcessIsolation(level: .processGroup)))
        XCTAssertEqual(noDrop.missing(for: ProcessIsolation(level: .none, dropsCapabilities: true)), reason)
    }

    func testEveryStepIsReportedUnderItsOwnName() {
        let names = SpawnStep.allCases.map(\.description)
        XCTAssertEqual(Set(names).count, names.count, "two steps share a name: \(names)")
        let spec = ProcessSpec(executable: "/bin/job", arguments: ["job"])
        var reported: [SpawnStep] = []
        for raw in Int32(0)...Int32(40) {
            guard let step = SpawnStep(reported: raw) else { continue }
            reported.append(step)
            let error = SpawnError(step: raw, errno: EPERM, index: 0, spec: spec)
            XCTAssertEqual(error.step, step)
            if step != .exec && step != .changeDirectory {
                // The name first, perhaps with what it worked on: "setrlimit(RLIMIT_CORE, soft 0, hard 0) failed".
                XCTAssertTrue(error.message.hasPrefix("cannot start '/bin/job': \(step)"), error.message)
                XCTAssertTrue(error.message.hasSuffix(" failed: Operation not permitted"), error.message)
            }
        }
        XCTAssertEqual(Set(reported), Set(SpawnStep.allCases), "a step nr_spawn cannot report, or one it reports twice")
        let bounding = SpawnError(step: Int32(NR_STEP_CAPBSET_DROP.rawValue), errno: EPERM, index: 21, spec: spec)
        XCTAssertEqual(
            bounding.message,
            "cannot start '/bin/job': prctl(PR_CAPBSET_DROP) (capability 21) failed: Operation not permitted")
        XCTAssertEqual(bounding.code, .isolationFailed)
        XCTAssertFalse(bounding.isSupervisorSide)
        XCTAssertEqual(reported.count, SpawnStep.allCases.count)
    }
}
