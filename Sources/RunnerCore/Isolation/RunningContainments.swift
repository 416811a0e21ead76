import Synchronization

/// The containments of the attempts running now, by delivery: what the resource monitor samples and what
/// orphan cleanup must leave alone.
final class RunningContainments: Sendable {
    struct Running: Sendable {
        var jobId: String
        var containment: JobContainment
    }

    private let table = Mutex<[DeliveryKey: Running]>([:])
    /// Names of contexts being made, in use or being removed: taken before anything is created, so that a cleanup
    /// pass that lists the folders and cgroups first and reads this afterwards never removes a job's.
    private let names = Mutex<Set<String>>([])

    /// Takes `contextName` for one attempt; false (nothing taken) when another attempt here holds it already.
    func reserve(contextName: String) -> Bool { names.withLock { $0.insert(contextName).inserted } }

    func release(contextName: String) { _ = names.withLock { $0.remove(contextName) } }

    func add(_ key: DeliveryKey, jobId: String, containment: JobContainment) {
        table.withLock { $0[key] = Running(jobId: jobId, containment: containment) }
    }

    func remove(_ key: DeliveryKey) {
        _ = table.withLock { $0.removeValue(forKey: key) }
    }

    var all: [Running] { table.withLock { Array($0.values) } }

    /// The context names (work folder, cgroup) reserved now.
    var contextNames: Set<String> { names.withLock { $0 } }
}

/// Resource admission: a job that declares a memory limit starts only when the host can give that much now — no
/// more than the host's available memory, and no more than its total less what admitted jobs declared — and
/// otherwise waits (its slot stays taken, its entry pending on this runner) until jobs end or memory frees up.
actor MemoryAdmission {
    private let totalBytes: UInt64?
    private let availableBytes: @Sendable () -> UInt64?
    private var reserved: [DeliveryKey: UInt64] = [:]
    private var waiters: [DeliveryKey: UInt64] = [:]
    private let changed: @Sendable () -> Void

    /// `availableBytes` reads the host's available memory; `changed` is told when the waiting set changes.
    init(
        totalBytes: UInt64?, availableBytes: @escaping @Sendable () -> UInt64?,
        changed: @escaping @Sendable () -> Void = {}
    ) {
        self.totalBytes = totalBytes
        self.availableBytes = availableBytes
        self.changed = changed
    }

    /// Bytes reserved by admitted jobs.
    var reservedBytes: UInt64 { reserved.values.reduce(0, +) }
    /// Jobs waiting for memory, with what they declared.
    var waiting: [DeliveryKey: UInt64] { waiters }

    /// Waits until `bytes` can be given (polling every `interval`); false when the task was cancelled first.
    func admit(key: DeliveryKey, bytes: UInt64, interval: Duration = .milliseconds(250)) async -> Bool {
        var announced = false
        defer {
            if announced {
                waiters[key] = nil
                changed()
            }
        }
        while !Task.isCancelled {
            if fits(bytes) {
                reserved[key] = bytes
                return true
            }
            if !announced {
                announced = true
                waiters[key] = bytes
                changed()
            }
            try? await Task.sleep(for: interval)
        }
        return false
    }

    func release(key: DeliveryKey) { reserved[key] = nil }

    private func fits(_ bytes: UInt64) -> Bool {
        let reserved = reservedBytes
        if let totalBytes, reserved + bytes > totalBytes { return false }
        guard let available = availableBytes() else { return true }
        return bytes <= available
    }
}
