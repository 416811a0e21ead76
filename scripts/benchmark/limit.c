/* limit: the least a Redis-streams process runner must do per job, as a yardstick for the runner.
 *
 *   limit HOST PORT STREAM GROUP WORKERS
 *
 * Starts WORKERS processes (the concurrency). Each has its own connection and consumer name and loops:
 * XREADGROUP COUNT 1 BLOCK (one entry), posix_spawn of the entry's `exe` field (with its `arg` field as the one
 * argument when there is one; no JSON to parse) + waitpid, then one pipelined write of the result
 * (HSET <STREAM's hash tag prefix>job:<id> state succeeded exit_code N) and the XACK, and reads both replies.
 * No lease, no fencing, no events, no output capture: only the physical floor of the work. Runs until killed
 * (SIGTERM ends the workers with it). The group must exist (the driver creates it). */
#include <hiredis/hiredis.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static void fail(const char *what, redisContext *c) {
    fprintf(stderr, "limit: %s: %s\n", what, c && c->err ? c->errstr : "unexpected reply");
    exit(1);
}

static void work(const char *host, int port, const char *stream, const char *group, int index) {
    redisContext *c = redisConnect(host, port);
    if (!c || c->err) fail("connect", c);
    char consumer[32];
    snprintf(consumer, sizeof consumer, "limit-%d", index);
    /* "{ns}:jobs:default" -> "{ns}:job:" for the result hash. */
    const char *tag_end = strchr(stream, '}');
    int prefix = tag_end ? (int)(tag_end - stream + 1) : 0;
    for (;;) {
        redisReply *r = redisCommand(c, "XREADGROUP GROUP %s %s COUNT 1 BLOCK 5000 STREAMS %s >", group, consumer,
                                     stream);
        if (!r) fail("XREADGROUP", c);
        if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) { freeReplyObject(r); continue; }
        redisReply *entries = r->element[0]->element[1];
        for (size_t e = 0; e < entries->elements; e++) {
            redisReply *entry = entries->element[e];
            const char *entry_id = entry->element[0]->str;
            redisReply *fields = entry->element[1];
            const char *job = entry_id;
            char *argv[3] = {NULL, NULL, NULL};
            for (size_t f = 0; f + 1 < fields->elements; f += 2) {
                const char *name = fields->element[f]->str;
                char *value = fields->element[f + 1]->str;
                if (strcmp(name, "id") == 0) job = value;
                else if (strcmp(name, "exe") == 0) argv[0] = value;
                else if (strcmp(name, "arg") == 0) argv[1] = value;
            }
            if (!argv[0]) { fprintf(stderr, "limit: entry %s has no exe field\n", entry_id); exit(1); }
            pid_t pid;
            int status = 0;
            if (posix_spawn(&pid, argv[0], NULL, NULL, argv, environ) != 0) { perror("limit: posix_spawn"); exit(1); }
            while (waitpid(pid, &status, 0) < 0) {}
            int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            redisAppendCommand(c, "HSET %b:job:%s state succeeded exit_code %d", stream, (size_t)prefix, job, code);
            redisAppendCommand(c, "XACK %s %s %s", stream, group, entry_id);
            for (int k = 0; k < 2; k++) {
                redisReply *w;
                if (redisGetReply(c, (void **)&w) != REDIS_OK) fail("result write", c);
                if (w->type == REDIS_REPLY_ERROR) { fprintf(stderr, "limit: %s\n", w->str); exit(1); }
                freeReplyObject(w);
            }
        }
        freeReplyObject(r);
    }
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: limit HOST PORT STREAM GROUP WORKERS\n");
        return 2;
    }
    int workers = atoi(argv[5]);
    if (workers < 1) { fprintf(stderr, "limit: WORKERS must be a positive number, got '%s'\n", argv[5]); return 2; }
    pid_t parent = getpid();
    for (int i = 0; i < workers; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent) _exit(1);
            work(argv[1], atoi(argv[2]), argv[3], argv[4], i);
        }
        if (pid < 0) { perror("limit: fork"); return 1; }
    }
    int status;
    while (wait(&status) > 0) {}
    return 0;
}
