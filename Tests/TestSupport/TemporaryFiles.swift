import Foundation

/// Files a test writes (config files and the like), removed when this goes away.
public final class TemporaryFiles {
    private var urls: [URL] = []

    public init() {}

    /// Writes `text` to a new file in the temporary directory and returns its path.
    public func write(_ text: String, suffix: String = ".json") throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("nr-test-\(UUID().uuidString)\(suffix)")
        try Data(text.utf8).write(to: url)
        urls.append(url)
        return url.path
    }

    deinit {
        for url in urls { try? FileManager.default.removeItem(at: url) }
    }
}
