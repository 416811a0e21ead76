import Foundation
import RunnerCore
import RunnerProtocol

/// `runner top`'s screen: a pure function from a snapshot to lines no wider than `width`.
enum TopView {
    /// The lines showing `snapshot`: a title, then runners, running jobs, queues and (unless `showsEvents` is
    /// false: `--events 0`) the recent events.
    static func render(_ snapshot: PoolSnapshot, width: Int, showsEvents: Bool = true) -> [String] {
        let now = snapshot.takenAtMs
        var lines: [String] = []
        let live = snapshot.runners.filter { $0.leaseRemainingMs != nil }
        let queued = snapshot.queues.reduce(0) { $0 + $1.unread }
        // A registry of another type lists no runner: "0/0 live" would say that the pool has none.
        let runnersText =
            WrongTypeKey.registry(in: snapshot.wrongTypeKeys, of: Keyspace(namespace: snapshot.namespace)) != nil
            ? "runners ?" : "runners \(live.count)/\(snapshot.runners.count) live"
        // The figures before the time: a narrow terminal cuts the title's end.
        lines.append(
            "NativeRunner pool '\(snapshot.namespace)'  \(runnersText)  jobs running \(snapshot.running.count)  "
                + "waiting \(queued)  retrying \(snapshot.retriesScheduled)  \(formatTimestamp(now))")

        let runners = snapshot.runners.map { runner -> [String] in
            let record = runner.record
            // A lost runner's figures are history, as its slots are (`status` shows them so too).
            let usage = runner.isLost ? nil : snapshot.usage[runner.id]
            return [
                runner.id, record[RunnerRecordField.node]?.stringValue ?? "?",
                StatusCommand.stateText(
                    record[RunnerRecordField.state]?.stringValue, leaseHeld: runner.leaseRemainingMs != nil),
                StatusCommand.leaseText(runner),
                runner.isLost
                    ? "-"
                    : StatusCommand.slots(record).map {
                        bar(used: $0.busy, total: $0.capacity) + " \($0.busy)/\($0.capacity)"
                    }
                        ?? "?",
                usage?.cpuPercent.map { String(format: "%.1f%%", $0) } ?? "-",
                memoryText(used: usage?.memoryUsedBytes, total: usage?.memoryTotalBytes),
                usage?.load1.map { String(format: "%.2f", $0) } ?? "-",
            ]
        }
        lines += section(
            "RUNNERS", empty: noRunnersText(namespace: snapshot.namespace, wrongTypeKeys: snapshot.wrongTypeKeys),
            header: ["ID", "NODE", "STATE", "LEASE", "SLOTS", "CPU", "MEMORY", "LOAD"], runners)

        let jobs = snapshot.running.sorted { ($0.startedAtMs ?? .max, $0.id) < ($1.startedAtMs ?? .max, $1.id) }
        lines += section(
            "RUNNING JOBS", empty: "(none)", header: ["JOB", "RUNNER", "QUEUE", "ATTEMPT", "RUNTIME", "CPU", "RSS"],
            jobs.map { job in
                [
                    job.id, job.runner, job.queue.isEmpty ? "-" : job.queue, job.attempt.map(String.init) ?? "-",
                    job.startedAtMs.flatMap { runtime(since: $0, now: now) }.map(runtimeText) ?? "-",
                    job.cpuPercent.map { String(format: "%.1f%%", $0) } ?? "-", job.rssBytes.map(bytesText) ?? "-",
                ]
            })

        lines += section(
            "QUEUES", empty: "(none)", header: ["NAME", "LENGTH", "PENDING", "LAG", "CONSUMERS"],
            snapshot.queues.map { queue in
                [
                    StatusCommand.shownName(queue), String(queue.length), String(queue.pending),
                    queue.lag.map(String.init) ?? "-", String(queue.consumers),
                ]
            })

        let unserved = UnservedQueue.find(runners: snapshot.runners, queues: snapshot.queues)
        if !unserved.isEmpty {
            lines += ["", "NOT SERVED"] + unserved.map { "  not served: " + $0.text }
        }
        let waiting = StatusCommand.waitingForLabelsLines(runners: snapshot.runners, queues: snapshot.queues)
        if !waiting.isEmpty { lines += ["", "WAITING FOR LABELS"] + waiting }
        lines += wrongTypeLines(snapshot.wrongTypeKeys)

        if showsEvents {
            lines.append("")
            lines.append("RECENT EVENTS")
            if snapshot.events.isEmpty { lines.append("  (none)") }
            lines += eventLines(snapshot.events)
        }
        return lines.map { clip(shown($0), to: width) }
    }

    /// One line per event: time, type, `runner=`, `job=`, each column padded to its widest cell among the events
    /// shown, so that each starts at one offset whatever the types' lengths; a column no event has is left out.
    static func eventLines(_ events: [PoolEvent]) -> [String] {
        let rows = events.map { event in
            [
                // The time of day of a date; a `ts` that makes none is shown whole.
                event.hasDate ? String(event.timeText.dropFirst(11).dropLast()) : event.timeText, event.type,
                event.runner.isEmpty ? "" : "runner=\(event.runner)", event.job.isEmpty ? "" : "job=\(event.job)",
            ]
        }
        let shown = (0..<4).filter { column in rows.contains { !$0[column].isEmpty } }
        return table(rows.map { row in shown.map { row[$0] } })
    }

    /// What RUNNERS shows when it lists none: that none is registered in the namespace (named, so that a mistyped
    /// --namespace does not pass for an empty pool), or that the registry cannot be read because its key holds
    /// another type (as WRONG TYPE names it), not that there is no runner.
    static func noRunnersText(namespace: String, wrongTypeKeys: [WrongTypeKey]) -> String {
        guard let wrong = WrongTypeKey.registry(in: wrongTypeKeys, of: Keyspace(namespace: namespace)) else {
            return "(none registered in namespace '\(namespace)')"
        }
        return "(cannot list the runners: \(wrong.text))"
    }

    /// The keys a view left out because they hold another type, one line each (nothing when there are none).
    static func wrongTypeLines(_ keys: [WrongTypeKey]) -> [String] {
        keys.isEmpty ? [] : ["", "WRONG TYPE (left out of this view)"] + keys.map { "  " + $0.text }
    }

    /// A blank line, the title, then the table (header first), or `empty` when there are no rows.
    static func section(_ title: String, empty: String, header: [String], _ rows: [[String]]) -> [String] {
        ["", title] + (rows.isEmpty ? ["  " + empty] : table([header] + rows))
    }

    /// `[####------]`: used slots against the total, at most 10 cells (one per slot when fewer).
    static func bar(used: Int, total: Int) -> String {
        guard total > 0 else { return "[]" }
        let cells = min(total, 10)
        let filled = min(cells, Int((Double(max(0, used)) / Double(total) * Double(cells)).rounded(.up)))
        return "[" + String(repeating: "#", count: filled) + String(repeating: "-", count: cells - filled) + "]"
    }

    /// How long a job has run (0 for a start after `now`); nil when a `started_at` written by hand is so far back
    /// that Int cannot hold the difference (-9223372036854775808 trapped `runner top`): its RUNTIME shows `-`.
    static func runtime(since startedAtMs: Int, now: Int) -> Int? {
        let (ms, overflow) = now.subtractingReportingOverflow(startedAtMs)
        return overflow ? nil : max(0, ms)
    }

    static func runtimeText(_ ms: Int) -> String {
        let seconds = ms / 1000
        if seconds < 60 { return String(format: "%.1fs", Double(ms) / 1000) }
        if seconds < 3600 { return "\(seconds / 60)m\(String(format: "%02d", seconds % 60))s" }
        return "\(seconds / 3600)h\(String(format: "%02d", seconds % 3600 / 60))m"
    }

    static func bytesText(_ bytes: Int) -> String {
        let units = ["B", "K", "M", "G", "T"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(bytes)B" : String(format: "%.1f%@", value, units[unit])
    }

    static func memoryText(used: Int?, total: Int?) -> String {
        guard let used else { return "-" }
        return bytesText(used) + (total.map { "/" + bytesText($0) } ?? "")
    }

    /// Columns padded to their widest cell, two spaces apart, after `indent`.
    static func table(_ rows: [[String]], indent: String = "  ") -> [String] {
        let rows = rows.map { $0.map(shown) }
        let widths = (0..<(rows.first?.count ?? 0)).map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.map { row in
            let cells = row.enumerated().map {
                $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0)
            }
            var line = indent + cells.joined(separator: "  ")
            while line.hasSuffix(" ") { line.removeLast() }
            return line
        }
    }

    /// `text` with each control or format character escaped as `\u{1b}` (`JobEntry.escaped`: as `JobEntry.printable`
    /// does, but never cut): what the views show of the pool comes from Redis, where anyone may write a runner's node
    /// or state, a queue's key or an event's type with an escape sequence or a line break in it.
    static func shown(_ text: String) -> String { JobEntry.escaped(text) }

    /// At most `width` characters; a clipped line ends in `…`.
    static func clip(_ line: String, to width: Int) -> String {
        guard width > 0, line.count > width else { return line }
        return String(line.prefix(max(0, width - 1))) + "…"
    }
}
