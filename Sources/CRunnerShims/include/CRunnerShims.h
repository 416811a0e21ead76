// CRunnerShims: the C that Swift cannot call or must not run after fork.
//
// The header only uses plain C types so that importing it into Swift needs no _GNU_SOURCE (the .c file is built
// with it). Every function is a thin wrapper; ProcessSupervision reaches them through System.swift only.
#pragma once

#include <stdint.h>
#include <sys/types.h>

#include "nr_watchdog.h"

#ifdef __cplusplus
extern "C" {
#endif

/// Which step of starting a child failed. The child reports (step, errno) over a close-on-exec pipe.
typedef enum {
    NR_STEP_NONE = 0,
    NR_STEP_REPORT_PIPE = 1,  // parent: pipe2 for the report pipe
    NR_STEP_STACK = 2,        // parent: mmap of the child's stack
    NR_STEP_CLONE = 3,        // parent: clone
    NR_STEP_SETSID = 4,       // child: setsid
    NR_STEP_PDEATHSIG = 5,    // child: prctl(PR_SET_PDEATHSIG)
    NR_STEP_STDIO = 6,        // child: fcntl/dup2 of stdin, stdout, stderr
    NR_STEP_CLOSE_FDS = 7,    // child: close_range (or the close loop)
    NR_STEP_CHDIR = 8,        // child: chdir
    NR_STEP_EXEC = 9,         // child: execve
} nr_spawn_step;

/// Everything the child needs, prepared (allocated) by the parent before the clone.
typedef struct {
    const char *path;          // passed to execve as is (already resolved against PATH by the caller)
    char *const *argv;         // NULL-terminated
    char *const *envp;         // NULL-terminated, the complete environment
    const char *cwd;           // NULL = keep the parent's working directory
    int stdin_fd;              // becomes fd 0
    int stdout_fd;             // becomes fd 1
    int stderr_fd;             // becomes fd 2
    int die_with_parent;       // non-zero: prctl(PR_SET_PDEATHSIG, SIGKILL) + getppid() check
} nr_spawn_config;

typedef struct {
    pid_t pid;                 // > 0 when started
    int pidfd;                 // close-on-exec pidfd of the child (CLONE_PIDFD), -1 on failure
    int failed_step;           // nr_spawn_step, NR_STEP_NONE on success
    int failed_errno;
} nr_spawn_result;

/// Starts a child with clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD) on a private stack. In the child, only
/// async-signal-safe calls: all signal dispositions to SIG_DFL, setsid(), optional PR_SET_PDEATHSIG(SIGKILL) with the
/// getppid() race check, stdio from the given fds, every other fd closed (close_range, fallback loop), chdir, empty
/// signal mask, execve. The parent is suspended until the child has exec'd or exited, so on return the report pipe
/// already holds the failure, if any; a child that failed before exec has been reaped.
/// Returns 0 when the child runs the new program, -1 when it could not be started (result->failed_*).
/// Note: PR_SET_PDEATHSIG fires when the *thread* that called this exits.
int nr_spawn(const nr_spawn_config *config, nr_spawn_result *result);

/// The end of a child as reported by waitid.
typedef struct {
    int reaped;                // 1 when a child was reaped, 0 when none was ready (WNOHANG)
    pid_t pid;
    int code;                  // si_code: 1 CLD_EXITED, 2 CLD_KILLED, 3 CLD_DUMPED
    int status;                // si_status: exit status or signal number
    int64_t user_usec;         // ru_utime
    int64_t system_usec;       // ru_stime
    int64_t max_rss_kib;       // ru_maxrss
} nr_exit_info;

/// waitid(P_PIDFD, pidfd, WEXITED [| WNOHANG]) through the raw syscall, which also returns the rusage.
int nr_reap_pidfd(int pidfd, int nohang, nr_exit_info *info);

/// pidfd_send_signal(pidfd, sig, NULL, 0): signals exactly that process, even before it has a group of its own.
int nr_pidfd_send_signal(int pidfd, int sig);

/// waitid(P_ALL, 0, WEXITED | WNOHANG | WNOWAIT): 1 and *pid when a child is a zombie, 0 when none, -1 on error.
int nr_peek_zombie_child(pid_t *pid);

/// waitid(P_PID, pid, WEXITED | WNOHANG): 1 reaped, 0 not a zombie yet, -1 on error (ECHILD: not our child).
int nr_reap_pid_nohang(pid_t pid);

/// waitid(P_PGID, pgid, WEXITED | WNOHANG) until nothing is ready: how many zombies of that group were reaped.
int nr_reap_group_nohang(pid_t pgid);

/// Scans /proc: how many processes other than `exclude` are in process group `pgid` and not zombies. Zombies of that
/// group whose parent is the calling process are reaped on the way (waitid P_PID WNOHANG). -1 if /proc can't be read.
int nr_group_live_members(pid_t pgid, pid_t exclude);

/// Reads /proc/<pid>/stat: state letter, parent pid and process group. 0 on success, -1 (errno) otherwise.
int nr_proc_stat(pid_t pid, char *state, pid_t *ppid, pid_t *pgrp);

/// Reads /proc/self/task/*/children: the direct children of the calling process (up to max). -1 on error.
int nr_list_children(pid_t *out, int max);

/// prctl(PR_SET_CHILD_SUBREAPER, 1).
int nr_set_child_subreaper(void);

/// prctl(PR_GET_CHILD_SUBREAPER): 1 or 0, -1 on error.
int nr_is_child_subreaper(void);

/// prctl(PR_SET_NAME, name): names the calling thread (up to 15 bytes).
int nr_set_thread_name(const char *name);

/// pipe2(O_CLOEXEC), the read end O_NONBLOCK, and fcntl(F_SETPIPE_SZ, pipe_size) best effort when pipe_size > 0.
int nr_output_pipe(int fds[2], int pipe_size);

/// epoll_create1(EPOLL_CLOEXEC).
int nr_epoll_create(void);

/// epoll_ctl(EPOLL_CTL_ADD, fd, EPOLLIN) with `token` as the event's data (level-triggered).
int nr_epoll_add(int epfd, int fd, uint64_t token);

/// epoll_ctl(EPOLL_CTL_DEL, fd).
int nr_epoll_del(int epfd, int fd);

/// epoll_wait: the tokens of up to `max` ready fds; timeout in milliseconds (-1 forever). Returns the count or -1.
int nr_epoll_wait(int epfd, uint64_t *tokens, int max, int timeout_ms);

/// eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK).
int nr_eventfd_create(void);

/// write(eventfd, 1): wakes a poller.
int nr_eventfd_signal(int fd);

/// read(eventfd): clears the counter.
void nr_eventfd_drain(int fd);

#ifdef __cplusplus
}
#endif
