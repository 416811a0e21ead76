/// The head of an HTTP/1.x request: what the endpoint needs to answer it (it never reads a body).
public struct HTTPRequestHead: Sendable, Equatable {
    public var method: String
    /// The request target's path, without the query string.
    public var path: String
    /// The query string after `?`, if any.
    public var query: String?
    /// `HTTP/1.0` or `HTTP/1.1`.
    public var version: String
    /// Header fields in order, names lowercased, values trimmed.
    public var headers: [(name: String, value: String)]

    public init(
        method: String, path: String, query: String? = nil, version: String = "HTTP/1.1",
        headers: [(name: String, value: String)] = []
    ) {
        self.method = method
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
    }

    public static func == (a: HTTPRequestHead, b: HTTPRequestHead) -> Bool {
        a.method == b.method && a.path == b.path && a.query == b.query && a.version == b.version
            && a.headers.map(\.name) == b.headers.map(\.name) && a.headers.map(\.value) == b.headers.map(\.value)
    }
}

/// Why a request was refused before it reached a handler; each maps to the status the server answers.
public struct HTTPParseError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// Not HTTP/1.x request syntax (400).
        case malformed
        /// The head is longer than the limit (431).
        case headTooLarge
        /// More header fields than the limit (431).
        case tooManyHeaders
        /// An HTTP version other than 1.0 and 1.1 (505).
        case unsupportedVersion
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }

    /// The status this refusal is answered with.
    public var status: Int {
        switch code {
        case .malformed: 400
        case .headTooLarge, .tooManyHeaders: 431
        case .unsupportedVersion: 505
        }
    }
}

/// Parses a request head from the bytes read so far. Pure: the server feeds it what it has read.
public struct HTTPRequestParser: Sendable {
    /// Longest head accepted, request line and header fields together.
    public var maximumHeadBytes: Int
    /// Most header fields accepted.
    public var maximumHeaders: Int

    public init(maximumHeadBytes: Int = 8192, maximumHeaders: Int = 64) {
        self.maximumHeadBytes = maximumHeadBytes
        self.maximumHeaders = maximumHeaders
    }

    /// What the bytes so far amount to.
    public enum Outcome: Sendable, Equatable {
        /// The head is not complete yet: read more.
        case incomplete
        case complete(HTTPRequestHead)
        case invalid(HTTPParseError)
    }

    public func parse(_ bytes: [UInt8]) -> Outcome {
        guard let end = Self.endOfHead(bytes) else {
            if bytes.count > maximumHeadBytes {
                return .invalid(
                    HTTPParseError(.headTooLarge, "the request head is longer than \(maximumHeadBytes) bytes"))
            }
            // A request line must start with a token: garbage is refused before it fills the buffer.
            if let first = bytes.first, !Self.isTokenByte(first), first != 0x0D, first != 0x0A {
                return .invalid(HTTPParseError(.malformed, "the request does not start with a method"))
            }
            // Nor may it hold a control or non-ASCII byte: random bytes are refused at once, not after the timeout.
            if Self.requestLineSoFarIsInvalid(bytes) {
                return .invalid(HTTPParseError(.malformed, "the request line holds a byte no request line may"))
            }
            return .incomplete
        }
        guard end <= maximumHeadBytes else {
            return .invalid(HTTPParseError(.headTooLarge, "the request head is longer than \(maximumHeadBytes) bytes"))
        }
        var lines = Self.lines(bytes[..<end])
        // RFC 9112 2.2: a server should ignore at least one empty line before the request line.
        while lines.first?.isEmpty == true { lines.removeFirst() }
        guard let requestLine = lines.first else {
            return .invalid(HTTPParseError(.malformed, "the request has no request line"))
        }
        let head: HTTPRequestHead
        switch Self.requestLine(requestLine) {
        case .success(let parsed): head = parsed
        case .failure(let error): return .invalid(error)
        }
        var result = head
        for line in lines.dropFirst() {
            guard result.headers.count < maximumHeaders else {
                return .invalid(
                    HTTPParseError(.tooManyHeaders, "the request has more than \(maximumHeaders) header fields"))
            }
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > line.startIndex,
                line[..<colon].allSatisfy(Self.isTokenByte)
            else {
                return .invalid(HTTPParseError(.malformed, "a header line is not 'name: value'"))
            }
            let value = line[(colon + 1)...]
            guard value.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }) else {
                return .invalid(HTTPParseError(.malformed, "a header value holds a control character"))
            }
            let name = String(decoding: line[..<colon], as: UTF8.self).lowercased()
            let text = String(decoding: value, as: UTF8.self).trimmingSpaces()
            result.headers.append((name, text))
        }
        if result.version == "HTTP/1.1", !result.headers.contains(where: { $0.name == "host" }) {
            return .invalid(HTTPParseError(.malformed, "an HTTP/1.1 request without a Host header"))
        }
        return .complete(result)
    }

    /// Whether the request line read so far (after any empty lines) holds a byte other than visible ASCII, space,
    /// or the CR before its LF.
    static func requestLineSoFarIsInvalid(_ bytes: [UInt8]) -> Bool {
        let start = bytes.firstIndex { $0 != 0x0D && $0 != 0x0A } ?? bytes.endIndex
        for index in start..<bytes.count {
            let byte = bytes[index]
            if byte == 0x0A { return false }
            if byte == 0x0D, index + 1 == bytes.count || bytes[index + 1] == 0x0A { continue }
            if byte < 0x20 || byte > 0x7E { return true }
        }
        return false
    }

    /// Where the head ends (past its empty line), accepting bare LF line ends too.
    static func endOfHead(_ bytes: [UInt8]) -> Int? {
        var index = 0
        while index < bytes.count {
            if bytes[index] == 0x0A {
                // LF LF or LF CR LF ends the head, unless it is an empty line before the request line.
                let next = index + 1
                if next < bytes.count, bytes[next] == 0x0A, hasContent(bytes[..<index]) { return next + 1 }
                if next + 1 < bytes.count, bytes[next] == 0x0D, bytes[next + 1] == 0x0A, hasContent(bytes[..<index]) {
                    return next + 2
                }
            }
            index += 1
        }
        return nil
    }

    private static func hasContent(_ bytes: ArraySlice<UInt8>) -> Bool {
        bytes.contains { $0 != 0x0D && $0 != 0x0A }
    }

    /// The head's lines without their CR LF (or LF), the last empty one dropped.
    private static func lines(_ head: ArraySlice<UInt8>) -> [ArraySlice<UInt8>] {
        var result: [ArraySlice<UInt8>] = []
        var start = head.startIndex
        for index in head.indices where head[index] == 0x0A {
            var end = index
            if end > start, head[end - 1] == 0x0D { end -= 1 }
            result.append(head[start..<end])
            start = index + 1
        }
        while result.last?.isEmpty == true { result.removeLast() }
        return result
    }

    private static func requestLine(_ line: ArraySlice<UInt8>) -> Result<HTTPRequestHead, HTTPParseError> {
        let parts = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty else {
            return .failure(HTTPParseError(.malformed, "the request line is not 'METHOD TARGET VERSION'"))
        }
        guard parts[0].allSatisfy(isTokenByte) else {
            return .failure(HTTPParseError(.malformed, "the method is not a token"))
        }
        guard parts[1].allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            return .failure(HTTPParseError(.malformed, "the request target holds a space or control character"))
        }
        let version = String(decoding: parts[2], as: UTF8.self)
        guard version.hasPrefix("HTTP/") else {
            return .failure(HTTPParseError(.malformed, "the request line does not end with an HTTP version"))
        }
        guard version == "HTTP/1.1" || version == "HTTP/1.0" else {
            return .failure(HTTPParseError(.unsupportedVersion, "HTTP version \(version) is not supported"))
        }
        let target = String(decoding: parts[1], as: UTF8.self)
        guard target.hasPrefix("/") else {
            return .failure(HTTPParseError(.malformed, "the request target is not a path"))
        }
        let query = target.firstIndex(of: "?")
        return .success(
            HTTPRequestHead(
                method: String(decoding: parts[0], as: UTF8.self),
                path: query.map { String(target[..<$0]) } ?? target,
                query: query.map { String(target[target.index(after: $0)...]) }, version: version))
    }

    /// RFC 9110 tchar.
    static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            true
        default: "!#$%&'*+-.^_`|~".utf8.contains(byte)
        }
    }
}

/// A response: status, content type and a complete body. Always sent with `Connection: close`.
public struct HTTPResponse: Sendable, Equatable {
    public var status: Int
    public var contentType: String
    public var body: [UInt8]
    /// Extra header fields (name, value), e.g. `Allow` on a 405.
    public var headers: [String: String]

    public init(
        status: Int, contentType: String = "text/plain; charset=utf-8", body: [UInt8], headers: [String: String] = [:]
    ) {
        self.status = status
        self.contentType = contentType
        self.body = body
        self.headers = headers
    }

    /// A plain-text response; a line end is added.
    public static func text(_ status: Int, _ text: String) -> HTTPResponse {
        HTTPResponse(status: status, body: Array((text + "\n").utf8))
    }

    /// The bytes on the wire. `headOnly` leaves out the body (a HEAD request), keeping its length.
    public func serialized(headOnly: Bool = false) -> [UInt8] {
        var head = "HTTP/1.1 \(status) \(Self.reasonPhrase(status))\r\n"
        head += "Content-Type: \(contentType)\r\nContent-Length: \(body.count)\r\nConnection: close\r\n"
        for (name, value) in headers.sorted(by: { $0.key < $1.key }) { head += "\(name): \(value)\r\n" }
        head += "\r\n"
        return Array(head.utf8) + (headOnly ? [] : body)
    }

    static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 200: "OK"
        case 400: "Bad Request"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 408: "Request Timeout"
        case 431: "Request Header Fields Too Large"
        case 500: "Internal Server Error"
        case 503: "Service Unavailable"
        case 505: "HTTP Version Not Supported"
        default: "Status"
        }
    }
}

extension String {
    fileprivate func trimmingSpaces() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { $0 != " " && $0 != "\t" }) else { return "" }
        let last = scalars.lastIndex(where: { $0 != " " && $0 != "\t" })!
        return String(scalars[first...last])
    }
}
