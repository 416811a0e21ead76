import Foundation
import RunnerProtocol

/// A worker configuration file (`--config FILE`, `RUNNER_CONFIG`): one JSON object whose keys are the long option
/// names without their dashes, e.g. `{"queue": ["high", "default"], "shutdown-timeout": "45s"}`. Any option of the
/// command's `OptionSpec` table can be set, so an option added there is settable here with no code of its own.
struct ConfigurationFile: Sendable {
    /// One option set in the file.
    struct Entry: Sendable, Equatable {
        /// The values as `ParsedArguments` keeps them (a flag's `["true"]` or `["false"]`).
        var values: [String]
        /// The line of the key, from 1.
        var line: Int
    }

    var path: String
    /// By option name (`--queue`).
    var entries: [String: Entry]

    /// Value names of options that take a number, so a JSON number is accepted for them.
    private static let numericValueNames: Set<String> = ["N", "MILLICORES", "DURATION", "SIZE"]
    /// The largest config file read (a config is a page of options, not a data file).
    static let maximumBytes = 1 << 20
    /// Options that cannot come from the file itself.
    private static let notInFile: Set<String> = ["--config", "--help"]

    /// Reads and checks the file against `options`. Every mistake is a usage error naming the file and line.
    static func load(path: String, options: [OptionSpec], command: String) throws(UsageError) -> ConfigurationFile {
        func fail(_ message: String) -> UsageError { UsageError(message, command: command, pointsToHelp: false) }
        var info = stat()
        if stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_size > maximumBytes {
            throw fail("the config file \(path) is \(info.st_size) bytes; a config file may have at most 1 MiB")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            let reason = access(path, R_OK) == 0 ? "it is not a readable file" : String(cString: strerror(errno))
            throw fail("cannot read the config file \(path): \(reason)")
        }
        return try parse(Array(data), path: path, options: options, command: command)
    }

    /// Checks the text of a config file (`path` only names it in errors).
    static func parse(
        _ text: [UInt8], path: String, options: [OptionSpec], command: String
    ) throws(UsageError) -> ConfigurationFile {
        // An editor's UTF-8 byte order mark is no JSON: read as white space, so that columns stay the file's.
        var bytes = text
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes.replaceSubrange(0..<3, with: [0x20, 0x20, 0x20]) }
        func fail(_ line: Int, _ message: String) -> UsageError {
            UsageError("\(path):\(line): \(message)", command: command, pointsToHelp: false)
        }
        let document: JSONValue
        let members: [(key: String, offset: Int, value: JSONValue)]
        do {
            (document, members) = try JSONValue.parsingWithMemberOffsets(bytes)
        } catch {
            let (line, column) = position(of: error.offset, in: bytes)
            throw UsageError(
                "\(path):\(line):\(column): invalid JSON: \(error.reason)", command: command, pointsToHelp: false)
        }
        guard case .object = document else {
            let start = bytes.firstIndex { ![0x20, 0x09, 0x0A, 0x0D].contains($0) } ?? 0
            throw fail(
                position(of: start, in: bytes).line,
                "the config file must hold a JSON object of options, not \(document.typeName)")
        }
        let settable = options.filter { !notInFile.contains($0.name) }
        var entries: [String: Entry] = [:]
        for member in members {
            let line = position(of: member.offset, in: bytes).line
            let name = "--" + member.key
            guard let option = settable.first(where: { $0.name == name }) else {
                if notInFile.contains(name) { throw fail(line, "\"\(member.key)\" cannot be set in a config file") }
                let suggestion = closest(to: member.key, among: settable.map { String($0.name.dropFirst(2)) })
                throw fail(
                    line,
                    "unknown key \"\(member.key)\"" + (suggestion.map { " (did you mean \"\($0)\"?)" } ?? ""))
            }
            if let earlier = entries[name] {
                throw fail(line, "key \"\(member.key)\" is given twice (also on line \(earlier.line))")
            }
            entries[name] = Entry(values: try values(of: member.value, for: option, line: line, fail: fail), line: line)
        }
        return ConfigurationFile(path: path, entries: entries)
    }

    /// The JSON value as option values, or a usage error naming the types the option takes.
    private static func values(
        of value: JSONValue, for option: OptionSpec, line: Int, fail: (Int, String) -> UsageError
    ) throws(UsageError) -> [String] {
        let key = "\"\(option.name.dropFirst(2))\""
        func scalar(_ value: JSONValue, numeric: Bool) -> String? {
            switch value {
            case .string(let text): text
            case .int(let number) where numeric: String(number)
            case .double(let number) where numeric: String(number)
            default: nil
            }
        }
        switch option.kind {
        case .flag:
            guard case .bool(let on) = value else {
                throw fail(line, "\(key) must be true or false, not \(value.typeName)")
            }
            return [on ? "true" : "false"]
        case .value(let valueName):
            let numeric = numericValueNames.contains(valueName)
            guard let text = scalar(value, numeric: numeric) else {
                throw fail(
                    line, "\(key) must be \(numeric ? "a number or a string" : "a string"), not \(value.typeName)")
            }
            return [text]
        case .repeated(let valueName):
            let numeric = numericValueNames.contains(valueName)
            let items = value.arrayValue ?? [value]
            var texts: [String] = []
            for item in items {
                guard let text = scalar(item, numeric: numeric) else {
                    throw fail(
                        line,
                        "\(key) must be \(numeric ? "a number, a string" : "a string") or a list of them, not "
                            + (value.arrayValue == nil ? value.typeName : "a list holding \(item.typeName)"))
                }
                texts.append(text)
            }
            return texts
        }
    }

    /// Line and column (both from 1, the column in bytes) of a byte offset. A line ends at LF, CRLF or a lone CR
    /// (old Mac files): JSON takes all three as white space.
    static func position(of offset: Int, in bytes: [UInt8]) -> (line: Int, column: Int) {
        var line = 1
        var lineStart = 0
        for index in 0..<min(offset, bytes.count) {
            let byte = bytes[index]
            if byte == 0x0A || (byte == 0x0D && (index + 1 == bytes.count || bytes[index + 1] != 0x0A)) {
                line += 1
                lineStart = index + 1
            }
        }
        return (line, offset - lineStart + 1)
    }

    /// The known name nearest to `name` when it is a likely typo (at most a third of its letters off).
    static func closest(to name: String, among names: [String]) -> String? {
        let scored = names.map { ($0, editDistance(Array(name), Array($0))) }
        guard let best = scored.min(by: { $0.1 < $1.1 }), best.1 <= max(2, name.count / 3) else { return nil }
        return best.0
    }

    private static func editDistance(_ a: [Character], _ b: [Character]) -> Int {
        var previous = Array(0...b.count)
        for (i, x) in a.enumerated() {
            var current = [i + 1]
            for (j, y) in b.enumerated() {
                current.append(min(previous[j + 1] + 1, current[j] + 1, previous[j] + (x == y ? 0 : 1)))
            }
            previous = current
        }
        return previous[b.count]
    }
}
