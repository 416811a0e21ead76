import HTTPEndpoint
import RunnerCore

/// `--metrics-listen HOST:PORT`: the worker's (or the control plane's pool-wide) `/metrics`, `/healthz` and `/readyz`.
enum MetricsListen {
    static let option = OptionSpec(
        "--metrics-listen", .value("HOST:PORT"),
        help: "Serve /metrics (Prometheus), /healthz and /readyz over HTTP here; port 0 picks a free port (logged).",
        environment: "RUNNER_METRICS_LISTEN", default: "off")

    /// `runner control`'s: its own variable, so that a worker and a control plane can share an environment file.
    static let controlOption = OptionSpec(
        "--metrics-listen", .value("HOST:PORT"),
        help: "Serve the pool's figures on /metrics (Prometheus; queues, runners by state, retries, dead letters), "
            + "/healthz and /readyz over HTTP here; port 0 picks a free port (logged).",
        environment: "RUNNER_CONTROL_METRICS_LISTEN", default: "off")

    /// The address asked for, if any; a malformed one is a usage error of `command`.
    static func address(_ arguments: ParsedArguments, command: String = WorkerCommand.spec.name) throws
        -> HTTPListenAddress?
    {
        guard let text = arguments.value(option.name) else { return nil }
        do {
            return try HTTPListenAddress(parsing: text)
        } catch {
            throw UsageError("invalid value for '--metrics-listen': \(error.message)", command: command)
        }
    }

    /// Binds now, so that a port in use or an address not on this host stops the command at start (exit 2), and
    /// answers with `respond` on the server's own thread. Logs the bound address (with the port chosen for 0).
    static func start(
        _ address: HTTPListenAddress, logger: Logger, respond: @escaping @Sendable (HTTPRequestHead) -> HTTPResponse
    ) throws -> HTTPServer {
        let server: HTTPServer
        do {
            server = try HTTPServer(listen: address)
        } catch {
            throw WorkerError(.invalidConfiguration, "--metrics-listen: \(error.message)")
        }
        server.start(handler: respond)
        logger.info("metrics endpoint listening", ["address": server.boundAddress.description])
        return server
    }
}
