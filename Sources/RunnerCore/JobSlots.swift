/// The executor slots: which jobs run, how many slots are free, and latches for "a slot is free" and "all idle"
/// (no job in flight, results written).
actor JobSlots {
    struct Slot {
        var jobId: String
        var task: Task<Void, Never>?
        /// A cancel came before the task was attached: attaching cancels it.
        var cancelled = false
        /// Its process has ended and been torn down; only its result is being written. It no longer takes a slot.
        var processEnded = false
    }

    let capacity: Int
    private var slots: [DeliveryKey: Slot] = [:]
    private var freeWaiters: [Latch] = []
    private var emptyWaiters: [Latch] = []
    /// Counts the changes of the slots (a job taken, its process ended, its slot released).
    private(set) var changes = 0
    /// The latch the next change fires: one for every caller, so that a caller that stops waiting (a timeout) leaves
    /// nothing behind however often it asks.
    private var nextChange: Latch?

    init(capacity: Int) { self.capacity = capacity }

    /// Slots for new jobs: the capacity less the jobs whose processes run (or are about to). A job whose process
    /// has ended frees its slot at once: the next job starts while its result is written, rather than a round trip
    /// later.
    var free: Int { capacity - slots.values.count { !$0.processEnded } }
    /// Jobs taken and not yet recorded, their processes running or not.
    var inFlight: Int { slots.count }
    var runningJobIds: [String] { slots.values.map(\.jobId).sorted() }
    /// The entries taken and not yet recorded (running, or their result being written).
    var runningKeys: Set<DeliveryKey> { Set(slots.keys) }

    /// Takes a slot for an entry before its task exists, so that a fast job's `release` can't precede it.
    func reserve(_ key: DeliveryKey, jobId: String) {
        slots[key] = Slot(jobId: jobId)
        changed()
    }

    /// Attaches the task running a reserved slot (ignored if the slot was already released).
    func attach(_ key: DeliveryKey, task: Task<Void, Never>) {
        guard slots[key] != nil else { return }
        slots[key]?.task = task
        if slots[key]?.cancelled == true { task.cancel() }
    }

    /// The job's process has ended: its slot is free for the next job (it stays in `runningKeys` and
    /// `runningJobIds` until `release`, since its entry is pending until its result is written).
    func processEnded(_ key: DeliveryKey) {
        guard slots[key] != nil, slots[key]?.processEnded == false else { return }
        slots[key]?.processEnded = true
        let waiters = freeWaiters
        freeWaiters.removeAll()
        waiters.forEach { $0.fire() }
        changed()
    }

    func release(_ key: DeliveryKey) {
        guard slots.removeValue(forKey: key) != nil else { return }
        changed()
        let waiters = freeWaiters
        freeWaiters.removeAll()
        waiters.forEach { $0.fire() }
        if slots.isEmpty {
            let empties = emptyWaiters
            emptyWaiters.removeAll()
            empties.forEach { $0.fire() }
        }
    }

    /// A latch that fires when at least one slot is free (already fired if one is).
    func freeSlotLatch() -> Latch {
        if free > 0 { return Latch(fired: true) }
        let latch = Latch()
        freeWaiters.append(latch)
        return latch
    }

    /// A latch that fires at the first change after `changes` reached `seen` (already fired if it came).
    func changeLatch(after seen: Int) -> Latch {
        if changes != seen { return Latch(fired: true) }
        if let nextChange { return nextChange }
        let latch = Latch()
        nextChange = latch
        return latch
    }

    private func changed() {
        changes &+= 1
        nextChange?.fire()
        nextChange = nil
    }

    /// A latch that fires when no job runs (already fired if none does).
    func emptyLatch() -> Latch {
        if slots.isEmpty { return Latch(fired: true) }
        let latch = Latch()
        emptyWaiters.append(latch)
        return latch
    }

    /// Cancels the task of one job (a cancel command); false when it does not run here.
    func cancel(jobId: String) -> Bool {
        guard let (key, slot) = slots.first(where: { $0.value.jobId == jobId }) else { return false }
        slots[key]?.cancelled = true
        slot.task?.cancel()
        return true
    }

    /// Cancels the tasks of these entries (jobs that wait and have not started: they are handed back).
    func cancel(_ keys: some Sequence<DeliveryKey>) {
        for key in keys where slots[key] != nil {
            slots[key]?.cancelled = true
            slots[key]?.task?.cancel()
        }
    }

    /// Cancels every running job's task; their teardown runs to the end.
    func cancelAll() {
        for slot in slots.values { slot.task?.cancel() }
    }
}
