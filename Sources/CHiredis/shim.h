#ifndef NATIVERUNNER_CHIREDIS_SHIM_H
#define NATIVERUNNER_CHIREDIS_SHIM_H
// The only place hiredis is included. Static inline helpers only; no _GNU_SOURCE here (it breaks Glibc).
#include <hiredis/hiredis.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>

/// The context's error text (`redisContext.errstr`), which Swift sees as a tuple.
static inline const char *nr_redis_errstr(const redisContext *c) {
    return c->errstr;
}

/// Writes the context's output buffer with send(2) and MSG_NOSIGNAL, the job of hiredis' redisBufferWrite, which
/// uses write(2): writing to a socket the server closed then raises SIGPIPE and kills the process. After this the
/// buffer is empty, so redisGetReply only reads. On failure sets `c->err`/`c->errstr` like hiredis, stores errno
/// in `*saved_errno` and returns REDIS_ERR; otherwise REDIS_OK. Requires a blocking context.
static inline int nr_redis_flush(redisContext *c, int *saved_errno) {
    *saved_errno = 0;
    while (c->obuf != NULL && sdslen(c->obuf) > 0) {
        ssize_t n = send(c->fd, c->obuf, sdslen(c->obuf), MSG_NOSIGNAL);
        if (n < 0) {
            int e = errno;
            if (e == EINTR) {
                continue;
            }
            c->err = REDIS_ERR_IO;
            snprintf(c->errstr, sizeof(c->errstr), "%s", strerror(e));
            *saved_errno = e;
            return REDIS_ERR;
        }
        sdsrange(c->obuf, (int)n, -1);
    }
    return REDIS_OK;
}

/// redisGetReply, capturing errno right after the call (a read timeout is REDIS_ERR_IO with EAGAIN).
static inline int nr_redis_get_reply(redisContext *c, redisReply **reply, int *saved_errno) {
    void *raw = NULL;
    errno = 0;
    int status = redisGetReply(c, &raw);
    *saved_errno = errno;
    *reply = (redisReply *)raw;
    return status;
}

/// Non-blocking check of an idle connection: recv(2) with MSG_PEEK | MSG_DONTWAIT. Returns 1 when the peer has
/// closed it or it is in error (end of file, ECONNRESET, ...), 0 when it looks alive.
static inline int nr_socket_peer_closed(int fd) {
    char byte;
    ssize_t n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) {
        return 0;
    }
    if (n == 0) {
        return 1;
    }
    return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : 1;
}

/// Sets FD_CLOEXEC on a socket hiredis opened (it does not), so spawned job processes do not inherit it.
/// fcntl is variadic in C. Returns 0, or -1 with errno.
static inline int nr_set_cloexec(int fd) {
    int flags = fcntl(fd, F_GETFD);
    return flags < 0 ? -1 : fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

/// Names the calling thread (prctl(PR_SET_NAME); at most 15 bytes are kept). prctl is variadic in C, so the
/// Redis client's owner threads are named through this; a name of its own keeps it apart from CRunnerShims'.
static inline void nr_redis_name_thread(const char *name) {
    (void)prctl(PR_SET_NAME, (unsigned long)name, 0UL, 0UL, 0UL);
}

#endif
