import Foundation
import RedisClient
import RunnerProtocol
import Synchronization

/// Registry record fields besides the runner's own state: the counter of jobs it finished (over all runs of this
/// id) and fields taken over from the record of a runner whose identity it resumed.
final class RegistryExtras: Sendable {
    private struct State {
        var carried: [String: JSONValue] = [:]
        var finishedBefore = 0
        var finished = 0
    }
    private let state = Mutex(State())

    /// What the record carries now.
    var fields: [String: JSONValue] {
        state.withLock { state in
            var fields = state.carried
            // finishedBefore comes from a record anyone may have written: Int.max there must not trap.
            let (total, overflow) = state.finishedBefore.addingReportingOverflow(state.finished)
            fields[RunnerRecordField.jobsFinished] = .int(overflow ? .max : total)
            return fields
        }
    }

    /// Takes over the carried fields of an earlier record of this id.
    func carry(from record: [String: JSONValue]) {
        state.withLock { state in
            for name in RunnerRecordField.carriedOnTakeover {
                if let value = record[name] { state.carried[name] = value }
            }
            state.finishedBefore = record[RunnerRecordField.jobsFinished]?.intValue ?? 0
            state.carried[RunnerRecordField.jobsFinished] = nil
        }
    }

    func jobFinished() { state.withLock { $0.finished += 1 } }
}

/// What operating the pool adds to a worker: its operating mode (drain, resume, shutdown, migrate, the job budget
/// of an ephemeral runner), the gate its intake waits on, the cancels it accepted and its registry extras.
final class PoolOperations: Sendable {
    let mode: Mutex<OperatingMode>
    /// Fired (open) while the operating mode lets intake read; replaced by a closed one when it stops.
    private let gate = Mutex(Latch(fired: true))
    let cancellations = JobCancellations()
    let extras = RegistryExtras()

    init(jobLimit: Int?) {
        mode = Mutex(OperatingMode(jobLimit: jobLimit))
    }

    /// The gate as it is now: wait on it before reading.
    var intakeGate: Latch { gate.withLock { $0 } }

    var intakeOpen: Bool { mode.withLock { $0.intakeOpen } }

    /// Closes or opens the gate to match the mode.
    func updateGate() {
        let open = intakeOpen
        let opened = gate.withLock { latch -> Latch? in
            if open { return latch }
            if latch.isFired { latch = Latch() }
            return nil
        }
        opened?.fire()
    }

    /// Reads the registry record of a runner id to be taken over (`--resume-identity`). Throws when there is none.
    func takeOver(runner: String, client: RedisClient, keyspace: Keyspace) async throws {
        let bytes = try await client.send(
            RedisCommand(["HGET", keyspace.runners, runner]), retry: .whileUnreachable(deadline: .now + .seconds(10))
        ).bytes
        guard let bytes, let record = (try? JSONValue(parsing: bytes))?.objectValue else {
            throw WorkerError(
                .invalidConfiguration,
                "--resume-identity \(runner): no runner '\(runner)' in the registry \(keyspace.runners) to take over")
        }
        extras.carry(from: record)
    }
}
