import Synchronization

/// Entries read ahead of a free slot, so that a slot that frees starts its next job without waiting for a read.
///
/// They are this consumer's pending entries that no slot runs yet (not claimed: their attempt is not raised), read
/// under one lease epoch. The intake fills it only when a read brought as many entries as it asked for (the stream
/// had more than the free slots), and never beyond `capacity`. Whoever stops the intake (drain, shutdown, migration,
/// the end of an epoch, a stray-pending rescan) takes everything out and hands it back or lets the pending read take
/// it again; a runner that dies leaves them pending, and the reaper reschedules them like any unstarted entry.
final class PrefetchBuffer: Sendable {
    private struct State {
        var entries: [Delivery] = []
        /// The epoch the entries were read under (nil when empty).
        var epoch: LeaseEpoch?
    }

    /// At most this many entries are held.
    let capacity: Int
    private let state = Mutex(State())

    init(capacity: Int) { self.capacity = max(0, capacity) }

    /// How many more entries fit.
    var room: Int { state.withLock { capacity - $0.entries.count } }

    /// The entries held: pending entries that are not strays although no slot runs them.
    var keys: Set<DeliveryKey> { state.withLock { Set($0.entries.map(\.key)) } }

    /// Adds entries read under `epoch`; what does not fit, or was read under another epoch than those held, is
    /// returned for the caller to hand back.
    func add(_ deliveries: [Delivery], epoch: LeaseEpoch) -> [Delivery] {
        state.withLock { state in
            guard !deliveries.isEmpty else { return [] }
            if let held = state.epoch, held !== epoch { return deliveries }
            let fitting = deliveries.prefix(capacity - state.entries.count)
            state.entries += fitting
            if !state.entries.isEmpty { state.epoch = epoch }
            return Array(deliveries.dropFirst(fitting.count))
        }
    }

    /// Takes up to `count` entries in the order they were read, with the epoch they were read under.
    func take(upTo count: Int) -> (deliveries: [Delivery], epoch: LeaseEpoch?) {
        state.withLock { state in
            let taken = Array(state.entries.prefix(max(0, count)))
            state.entries.removeFirst(taken.count)
            let epoch = state.epoch
            if state.entries.isEmpty { state.epoch = nil }
            return (taken, epoch)
        }
    }

    /// Takes everything held.
    func takeAll() -> (deliveries: [Delivery], epoch: LeaseEpoch?) { take(upTo: .max) }
}
