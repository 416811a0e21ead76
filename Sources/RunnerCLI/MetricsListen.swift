import HTTPEndpoint
import RunnerCore

/// `--metrics-listen HOST:PORT`: the worker's `/metrics`, `/healthz` and `/readyz`.
enum MetricsListen {
    static let option = OptionSpec(
        "--metrics-listen", .value("HOST:PORT"),
        help: "Serve /metrics (Prometheus), /healthz and /readyz over HTTP here; port 0 picks a free port (logged).",
        environment: "RUNNER_METRICS_LISTEN", default: "off")

    /// The address asked for, if any; a malformed one is a usage error.
    static func address(_ arguments: ParsedArguments) throws -> HTTPListenAddress? {
        guard let text = arguments.value(option.name) else { return nil }
        do {
            return try HTTPListenAddress(parsing: text)
        } catch {
            throw UsageError("invalid value for '--metrics-listen': \(error.message)", command: WorkerCommand.spec.name)
        }
    }

    /// Binds now, so that a port in use or an address not on this host stops the worker at start (exit 2), and
    /// serves the worker's metrics on the server's own thread. Logs the bound address (with the port chosen for 0).
    static func start(_ address: HTTPListenAddress, worker: Worker, logger: Logger) throws -> HTTPServer {
        let server: HTTPServer
        do {
            server = try HTTPServer(listen: address)
        } catch {
            throw WorkerError(.invalidConfiguration, "--metrics-listen: \(error.message)")
        }
        let endpoint = MetricsEndpoint(metrics: worker.metrics)
        server.start { endpoint.respond($0) }
        logger.info("metrics endpoint listening", ["address": server.boundAddress.description])
        return server
    }
}
