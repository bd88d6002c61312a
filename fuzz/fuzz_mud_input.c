/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness: samplex-mud's input path (examples/mud/telnet_io.c:
 * libtelnet, line assembly, scrubbing), linked without sockets or a loop.
 *
 * Input: byte 0 chooses how the rest is split into reads (0: one byte per
 * read; else chunks of 1..64 bytes from a generator seeded by it); the rest
 * is what a peer sends. The stream is fed twice, whole and split, and what
 * the MUD would see must be the same both ways. The line handler prints an
 * answer (a libtelnet call nested in telnet_recv, as the MUD's commands do)
 * and "quit" ends the session from inside the handler, as the MUD does.
 *
 * Checked on every input:
 * - each line is at most MUD_LINE_MAX bytes, NUL-terminated, with no NUL,
 *   no control byte (C0, DEL, C1) and only well-formed UTF-8 (RFC 3629), and
 *   scrubbing it again changes nothing;
 * - telnet_io_scrub on the raw bytes gives the same guarantees;
 * - lines, overlong notices, refusals and output bytes do not depend on
 *   how the stream was split into reads, and nothing is delivered after a
 *   refusal (e.g. the peer turned on compression);
 * - no crash, no undefined behaviour, no leak (ASan, UBSan, LeakSanitizer).
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mud.h"

#include "fuzz_check.h"

/* telnet_io.c logs libtelnet's warnings; format them, print nothing. */
void mud_log(const char *format, ...)
{
    char text[256];
    va_list arguments;
    va_start(arguments, format);
    vsnprintf(text, sizeof(text), format, arguments);
    va_end(arguments);
}

/* ---- A growable byte record -------------------------------------------- */

typedef struct Record {
    unsigned char *bytes;
    size_t length;
    size_t capacity;
} Record;

static void record_append(Record *record, const void *bytes, size_t length)
{
    if (record->length + length > record->capacity) {
        size_t capacity = record->capacity ? record->capacity : 256;
        while (capacity < record->length + length)
            capacity *= 2;
        record->bytes = realloc(record->bytes, capacity);
        CHECK(record->bytes != NULL);
        record->capacity = capacity;
    }
    memcpy(record->bytes + record->length, bytes, length);
    record->length += length;
}

/* ---- What a line may contain ------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at `bytes`, or 0. Written apart
 * from telnet_io.c's, from RFC 3629's table, so the two check each other. */
static size_t utf8_length(const unsigned char *bytes, size_t available)
{
    uint32_t code;
    size_t length;
    if (bytes[0] < 0x80)
        return 1;
    if ((bytes[0] & 0xE0) == 0xC0) {
        length = 2;
        code = bytes[0] & 0x1Fu;
    } else if ((bytes[0] & 0xF0) == 0xE0) {
        length = 3;
        code = bytes[0] & 0x0Fu;
    } else if ((bytes[0] & 0xF8) == 0xF0) {
        length = 4;
        code = bytes[0] & 0x07u;
    } else {
        return 0;
    }
    if (available < length)
        return 0;
    for (size_t i = 1; i < length; i++) {
        if ((bytes[i] & 0xC0) != 0x80)
            return 0;
        code = code << 6 | (bytes[i] & 0x3Fu);
    }
    static const uint32_t smallest[] = {0, 0, 0x80, 0x800, 0x10000};
    if (code < smallest[length] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF))
        return 0;
    if (code >= 0x80 && code <= 0x9F)
        return 0; /* a C1 control: well-formed, but never let through */
    return length;
}

/* Printable ASCII and well-formed UTF-8 without controls, NUL-terminated. */
static void check_clean(const char *text, size_t length)
{
    const unsigned char *bytes = (const unsigned char *)text;
    CHECK(bytes[length] == '\0');
    for (size_t i = 0; i < length;) {
        CHECK(bytes[i] >= 0x20 && bytes[i] != 0x7F);
        size_t sequence = utf8_length(bytes + i, length - i);
        CHECK(sequence > 0);
        i += sequence;
    }
    /* Scrubbing clean text changes nothing. */
    char *again = malloc(length + 1);
    CHECK(again != NULL);
    CHECK(telnet_io_scrub(text, length, again) == length);
    CHECK(memcmp(again, text, length + 1) == 0);
    free(again);
}

/* ---- One run of a session --------------------------------------------- */

typedef struct Run {
    TelnetIO *io;
    Record events; /* 'L' length(2) bytes, or 'O' */
    Record output; /* every byte the MUD would send */
    unsigned lines;
    bool quit;
    bool refused;
} Run;

static void on_line(void *context, const char *line, size_t length)
{
    Run *run = context;
    CHECK(!run->refused && !run->quit); /* nothing after a refusal or "quit" */
    CHECK(length <= MUD_LINE_MAX);
    check_clean(line, length);
    unsigned char header[3] = {'L', (unsigned char)(length >> 8), (unsigned char)length};
    record_append(&run->events, header, sizeof(header));
    record_append(&run->events, line, length);
    run->lines++;
    if (strcmp(line, "quit") == 0) {
        run->quit = true;
        telnet_io_print(run->io, "Goodbye.\n");
        telnet_io_destroy(run->io); /* inside telnet_recv, as the MUD does */
        return;
    }
    /* An answer with a byte libtelnet must escape, printed from inside
     * telnet_recv like the MUD's command replies. */
    char answer[MUD_LINE_MAX + 16];
    snprintf(answer, sizeof(answer), "> %s \xff\n", line);
    telnet_io_print(run->io, answer);
}

static void on_overlong(void *context)
{
    Run *run = context;
    CHECK(!run->refused && !run->quit);
    record_append(&run->events, "O", 1);
}

static void on_refused(void *context, const char *reason)
{
    Run *run = context;
    CHECK(!run->refused && reason != NULL);
    run->refused = true;
    record_append(&run->events, "R", 1);
    telnet_io_print(run->io, "Refused.\n"); /* printing still works */
}

static void on_send(void *context, const void *bytes, size_t length)
{
    Run *run = context;
    CHECK(length > 0);
    record_append(&run->output, bytes, length);
}

/* Feeds `stream` in reads: seed 256 one read, 0 one byte per read, else
 * chunks of 1..64 bytes from a generator seeded by it. */
static void run_session(Run *run, const unsigned char *stream, size_t length, unsigned seed)
{
    PlexArena *arena = plex_arena_create(NULL, 0);
    CHECK(arena != NULL);
    static const TelnetIOHandlers handlers = {on_line, on_overlong, on_send, on_refused};
    run->io = telnet_io_create(arena, &handlers, run);
    CHECK(run->io != NULL);
    uint32_t state = seed * 2654435761u + 1;
    for (size_t offset = 0; offset < length;) {
        size_t part = length - offset;
        if (seed == 0) {
            part = 1;
        } else if (seed != 256) {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            size_t chunk = 1 + state % 64;
            part = chunk < part ? chunk : part;
        }
        telnet_io_receive(run->io, stream + offset, part);
        offset += part;
    }
    telnet_io_destroy(run->io);
    plex_arena_destroy(arena);
}

static void check_scrub(const unsigned char *stream, size_t length)
{
    char *output = malloc(length + 1);
    CHECK(output != NULL);
    size_t scrubbed = telnet_io_scrub((const char *)stream, length, output);
    CHECK(scrubbed <= length);
    CHECK(strlen(output) == scrubbed);
    check_clean(output, scrubbed);
    free(output);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    unsigned seed = data[0];
    const unsigned char *stream = data + 1;
    size_t length = size - 1;
    check_scrub(stream, length);

    Run whole = {0}, split = {0};
    run_session(&whole, stream, length, 256);
    run_session(&split, stream, length, seed);
    CHECK(whole.lines == split.lines);
    CHECK(whole.quit == split.quit);
    CHECK(whole.refused == split.refused);
    CHECK(whole.events.length == split.events.length);
    CHECK(whole.events.length == 0 ||
          memcmp(whole.events.bytes, split.events.bytes, whole.events.length) == 0);
    CHECK(whole.output.length == split.output.length);
    CHECK(whole.output.length == 0 ||
          memcmp(whole.output.bytes, split.output.bytes, whole.output.length) == 0);
    free(whole.events.bytes);
    free(whole.output.bytes);
    free(split.events.bytes);
    free(split.output.bytes);
    return 0;
}
