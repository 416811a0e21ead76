// The job watchdog: a small process forked from the runner that SIGKILLs the runner's job process groups when the
// runner stops renewing its deadline (it is paused, hung or too slow) or dies.
//
// Plain C types only, like CRunnerShims.h (which includes this header: it is the module's umbrella header).
#pragma once

#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// How many process groups one watchdog can watch (its table is mapped once, at start: the child never allocates).
#define NR_WATCHDOG_MAX_GROUPS 4096

/// The watchdog's exit status after QUIT: it killed nothing.
#define NR_WATCHDOG_EXIT_QUIT 0
/// The watchdog's exit status after its command channel closed (the runner died, or closed it): every watched
/// group was sent SIGKILL first.
#define NR_WATCHDOG_EXIT_RUNNER_GONE 3

/// Which step of starting the watchdog failed (all of them run in the parent; the child's set-up cannot fail).
typedef enum {
    NR_WATCHDOG_STEP_NONE = 0,
    NR_WATCHDOG_STEP_SOCKETPAIR = 1,  // socketpair(AF_UNIX, SOCK_SEQPACKET)
    NR_WATCHDOG_STEP_TIMERFD = 2,     // timerfd_create(CLOCK_BOOTTIME)
    NR_WATCHDOG_STEP_CLONE = 3,       // clone
    NR_WATCHDOG_STEP_MMAP = 4,        // mmap of the group table (MAP_SHARED | MAP_ANONYMOUS)
} nr_watchdog_step;

/// What the runner asks of the watchdog.
typedef enum {
    /// "If you hear no newer ARM or DISARM before `deadline_ns` (CLOCK_BOOTTIME), SIGKILL every watched group."
    NR_WATCHDOG_ARM = 1,
    /// Forget the deadline.
    NR_WATCHDOG_DISARM = 2,
    // 3 and 4 were ADD_GROUP and REMOVE_GROUP: the watched groups are in the shared group table now.
    /// Exit at once (status NR_WATCHDOG_EXIT_QUIT) without killing anything.
    NR_WATCHDOG_QUIT = 5,
} nr_watchdog_command_kind;

/// One command: one SOCK_SEQPACKET message, so it arrives whole or not at all. Kinds may be added (a cgroup to
/// kill would travel as an fd in SCM_RIGHTS); a watchdog answers a kind it does not know with a REJECTED report.
typedef struct {
    uint32_t kind;        // nr_watchdog_command_kind
    int32_t group;        // unused (0)
    int64_t deadline_ns;  // ARM: CLOCK_BOOTTIME nanoseconds
} nr_watchdog_command;

/// What the watchdog tells the runner.
typedef enum {
    /// An armed deadline passed: every watched group was sent SIGKILL; the watchdog is disarmed now and the groups
    /// stay in the table (the runner removes them as it reaps them).
    NR_WATCHDOG_FIRED = 1,
    /// A command was refused: `error` EINVAL (an unknown kind, a message of the wrong size); `command_kind` says
    /// which.
    NR_WATCHDOG_REJECTED = 2,
} nr_watchdog_report_kind;

/// One report: one SOCK_SEQPACKET message.
typedef struct {
    uint32_t kind;          // nr_watchdog_report_kind
    uint32_t command_kind;  // REJECTED: the kind of the refused command
    int32_t group;          // REJECTED: the `group` of the refused command
    int32_t error;          // REJECTED: errno-style reason
    int32_t watched;        // FIRED: how many groups were watched
    int32_t signalled;      // FIRED: for how many kill(-group, SIGKILL) succeeded (the others were gone already)
    int64_t deadline_ns;    // FIRED: the deadline that passed (CLOCK_BOOTTIME)
    int64_t fired_ns;       // FIRED: when the groups were killed (CLOCK_BOOTTIME)
} nr_watchdog_report;

/// A started watchdog, or why it could not start.
typedef struct {
    pid_t pid;         // > 0 when started
    int pidfd;         // close-on-exec pidfd of the watchdog (CLONE_PIDFD), for waiting and reaping
    int socket_fd;     // the runner's end (close-on-exec): commands out, reports in
    int32_t *groups;   // the group table shared with the watchdog: NR_WATCHDOG_MAX_GROUPS slots, 0 = free
    int failed_step;   // nr_watchdog_step, NR_WATCHDOG_STEP_NONE on success
    int failed_errno;
} nr_watchdog_started;

/// Starts the watchdog: socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC) with a large send buffer on the runner's
/// end, timerfd_create(CLOCK_BOOTTIME), the group table (one MAP_SHARED | MAP_ANONYMOUS mapping that the runner
/// writes with nr_watchdog_set_group and the watchdog reads when it kills: watching a group sends nothing and wakes
/// nobody, and what the runner wrote before it died or stopped is what the watchdog kills), then
/// clone(CLONE_PIDFD | SIGCHLD) without CLONE_VM: a copy-on-write process that makes only raw system calls (the
/// runner is multithreaded: no malloc, stdio or locks in the child). The child resets every signal disposition,
/// ignores the signals an operator or a terminal sends the runner or its group (HUP, INT, QUIT, TERM, PIPE, TSTP,
/// TTIN, TTOU: it ends by QUIT or by the runner's death, else SIGKILL), starts its own session (a signal to the
/// runner's group does not stop it), names itself "nr-watchdog" (PR_SET_NAME), changes to "/", closes every fd but
/// its socket end and the timerfd, and serves commands until QUIT or end of file. At end of file (every copy of the
/// runner's end closed: the runner died) it SIGKILLs every group in the table and exits with
/// NR_WATCHDOG_EXIT_RUNNER_GONE. It does not use PR_SET_PDEATHSIG: it must outlive the runner to kill the jobs.
/// Returns 0, or -1 with started->failed_step and failed_errno.
int nr_watchdog_start(nr_watchdog_started *started);

/// send(fd, command, MSG_NOSIGNAL | MSG_DONTWAIT), retried on EINTR: 0, or the errno (EAGAIN: the watchdog is not
/// reading; EPIPE/ECONNRESET: it is gone). Never raises SIGPIPE and never blocks.
int nr_watchdog_send(int fd, const nr_watchdog_command *command);

/// Puts `group` (> 1, not the watchdog's own; 0 frees the slot) in slot `slot` of a started watchdog's group table,
/// an atomic store that the watchdog's next kill sees.
void nr_watchdog_set_group(int32_t *groups, int slot, int32_t group);

/// Unmaps the group table (once the watchdog has been reaped).
void nr_watchdog_release_groups(int32_t *groups);

/// Blocking recv of the next report: 1 with *report, 0 at end of file (the watchdog exited), -1 with errno.
/// ECONNRESET (the watchdog exited with commands unread) is passed over: reports still queued follow it.
int nr_watchdog_receive(int fd, nr_watchdog_report *report);

/// waitid(P_PIDFD, pidfd, WEXITED | WNOWAIT), blocking and retried on EINTR: returns once the process is a zombie,
/// leaving it to be reaped. 0, or -1 with errno.
int nr_wait_exited(int pidfd);

/// shutdown(fd, SHUT_WR): the peer reads end of file once it has read what was sent before.
int nr_shutdown_write(int fd);

#ifdef __cplusplus
}
#endif
