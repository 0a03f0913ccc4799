/* The compiled line scanner of log_statistics: `keys(buffer, begin, end, since, first, last)`
 * gives what `Counter(classifier(since, first, last).findall(buffer, begin, end))` gives
 * (maintenance/logstats/chunks.py), as a dict in the order of first appearance, or None when
 * one of the pattern's keys would run across a newline (the caller then reads the chunk line
 * by line). Built by scripts/build_scanner.py; without it, chunks.py uses the pattern.
 *
 * The pattern, alternative by alternative, as `classifier` builds it:
 *
 *     \n (?: INSIDE " " | )                a record of the window, between first and last
 *     (   (?<=Z ) (?: KEYS | )             1. its key, or none (the lookbehind: INSIDE matched)
 *     |   "  "                             2. a continuation line
 *     |   (?= BELOW " " HEAD ) [0-9]       3. a record before `since`: one digit
 *     |   STAMP " " KEYS                   4. any other record, with its timestamp
 *     |                                    5. anything else: the empty key
 *     )
 *     KEYS = (?!ERROR |CRITICAL ) [^ ]++ " "++ [^ ]++ " [" [0-9]++ "] "
 *          | (?:ERROR|CRITICAL) " "++ [^ ]++ " [" [0-9]++ "] " [^\n]*+
 *     HEAD = (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) " "+ LOGGER+ " [" [0-9]+ "] "
 *
 * STAMP is a timestamp of the shape 0000-00-00T00:00:00.000Z (ASCII digits); INSIDE one from
 * `first` to `last` (never, without them), BELOW one before `since`: for stamps of one shape
 * that is byte order, memcmp. LOGGER is a byte of [\x00-\x08\x0e-\x1b\x21-\x7f].
 *
 * Why one reading of each alternative is the pattern's: once INSIDE matched, 1 matches (its
 * key or nothing), so the pattern never goes back on INSIDE nor tries 2 to 5 after it; else
 * they are tried in order at the line's start, and 5 always matches. `[^ ]++` and `" "++`
 * are possessive, and in HEAD a shorter run of spaces, logger or digits is followed by a
 * byte the next item refuses, so every run is taken whole. The runs of `[^ ]` take newlines:
 * a key can run into the next line (then the result is None), so every alternative is tried
 * against the chunk's end, not the line's. `findall` resumes after each key and its next
 * match begins at the next newline, which is the end of the current line when no key
 * crossed it.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#ifndef SOURCE_SHA256 /* set by the build: the hash of this file, that tests compare */
#define SOURCE_SHA256 "unknown"
#endif

#define STAMP_LEN 24
static const char SHAPE[] = "0000-00-00T00:00:00.000Z"; /* '0': any ASCII digit */

/* The limits of one scan: the bytes end at `end`; the window's bounds are optional. */
typedef struct {
    const char *end;
    const char *since, *first, *last; /* STAMP_LEN bytes each; first, last NULL: none */
} Limits;

/* -- the pattern's pieces: where each one's match at p ends, or NULL (or whether it matches) */

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* A timestamp of the shape at p (all its bytes checked, with no branch for each). */
static int is_stamp(const char *p, const char *end) {
    if (end - p < STAMP_LEN)
        return 0;
    int wrong = 0;
    for (int i = 0; i < STAMP_LEN; i++)
        wrong |= SHAPE[i] == '0' ? (unsigned char)(p[i] - '0') > 9 : p[i] != SHAPE[i];
    return !wrong;
}

static int starts_with(const char *p, const char *end, const char *word, size_t n) {
    return (size_t)(end - p) >= n && memcmp(p, word, n) == 0;
}

static const char *skip_spaces(const char *p, const char *end) {
    while (p < end && *p == ' ')
        p++;
    return p;
}

static const char *skip_non_spaces(const char *p, const char *end) {
    while (p < end && *p != ' ')
        p++;
    return p;
}

static const char *skip_digits(const char *p, const char *end) {
    while (p < end && is_digit(*p))
        p++;
    return p;
}

/* `" [" [0-9]++ "] "` at p. */
static const char *process_id(const char *p, const char *end) {
    if (!starts_with(p, end, " [", 2))
        return NULL;
    const char *digits = p + 2, *after = skip_digits(digits, end);
    if (after == digits || !starts_with(after, end, "] ", 2))
        return NULL;
    return after + 2;
}

/* `" "++ [^ ]++ " [" [0-9]++ "] "` at p: the spaces after a level, the logger, the pid. */
static const char *logger_and_pid(const char *p, const char *end) {
    const char *logger = skip_spaces(p, end);
    if (logger == p)
        return NULL;
    const char *after = skip_non_spaces(logger, end);
    return after == logger ? NULL : process_id(after, end);
}

/* KEYS at p. Its two alternatives exclude each other: the first refuses the beginnings of
 * the second, "ERROR " and "CRITICAL ", and the second needs one of them. */
static const char *keys(const char *p, const char *end) {
    size_t level = 0;
    if (starts_with(p, end, "ERROR ", 6))
        level = 5;
    else if (starts_with(p, end, "CRITICAL ", 9))
        level = 8;
    if (level) { /* an error: the message too, to the end of the line */
        const char *message = logger_and_pid(p + level, end);
        if (message == NULL)
            return NULL;
        const char *newline = memchr(message, '\n', (size_t)(end - message));
        return newline ? newline : end;
    }
    const char *after = skip_non_spaces(p, end);
    return after == p ? NULL : logger_and_pid(after, end);
}

static int is_logger_byte(unsigned char c) {
    return c <= 0x08 || (c >= 0x0e && c <= 0x1b) || (c >= 0x21 && c <= 0x7f);
}

/* HEAD at p (only whether it matches: it is a lookahead). The levels begin with five
 * different letters: at most one of them is at p. */
static int is_head(const char *p, const char *end) {
    static const char *const levels[] = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"};
    size_t i = 0;
    while (i < sizeof levels / sizeof *levels && !starts_with(p, end, levels[i], strlen(levels[i])))
        i++;
    if (i == sizeof levels / sizeof *levels)
        return 0;
    const char *spaces = p + strlen(levels[i]), *logger = skip_spaces(spaces, end), *after = logger;
    while (after < end && is_logger_byte((unsigned char)*after))
        after++;
    return logger > spaces && after > logger && process_id(after, end) != NULL;
}

/* The key of the line starting at p: [*start, returned end). */
static const char *line_key(const char *p, const Limits *limits, const char **start) {
    const char *end = limits->end, *found;
    if (limits->first && is_stamp(p, end) && memcmp(p, limits->first, STAMP_LEN) >= 0
        && memcmp(p, limits->last, STAMP_LEN) <= 0 && starts_with(p + STAMP_LEN, end, " ", 1)) {
        *start = p + STAMP_LEN + 1; /* INSIDE " " */
        found = keys(*start, end);
        return found ? found : *start; /* 1 */
    }
    *start = p;
    if (starts_with(p, end, "  ", 2))
        return p + 2; /* 2 */
    if (!is_stamp(p, end) || !starts_with(p + STAMP_LEN, end, " ", 1))
        return p; /* 5 */
    if (memcmp(p, limits->since, STAMP_LEN) < 0 && is_head(p + STAMP_LEN + 1, end))
        return p + 1; /* 3 */
    found = keys(p + STAMP_LEN + 1, end);
    return found ? found : p; /* 4, else 5 */
}

/* -- the keys counted: a hash table of (pointer, length) into the buffer ---------------- */

typedef struct {
    const char *key;
    Py_ssize_t size, count;
    uint64_t hash;
} Entry;

typedef struct {
    Entry *entries; /* in the order of first appearance */
    Py_ssize_t used, allocated;
    uint32_t *slots; /* 1 + the index of an entry, 0 for none; a power of two of them */
    size_t mask;
} Table;

/* Mixed into every hash, from Python's own randomised hash of bytes (PYTHONHASHSEED): lines
 * made to collide in one process do not collide in another. */
static uint64_t secret[2];

static uint64_t fold(uint64_t a, uint64_t b) {
    __uint128_t product = (__uint128_t)a * b;
    return (uint64_t)product ^ (uint64_t)(product >> 64);
}

static uint64_t load8(const char *p) {
    uint64_t word;
    memcpy(&word, p, 8);
    return word;
}

static uint64_t load4(const char *p) {
    uint32_t word;
    memcpy(&word, p, 4);
    return word;
}

/* wyhash's way with a key's bytes: whole words only, the last ones overlapping the others
 * (bytes loaded one at a time and read back as a word stall the processor). */
static uint64_t hash_key(const char *p, size_t n) {
    uint64_t h = secret[0] ^ n, a = 0, b = 0;
    if (n > 16) {
        for (; n > 16; p += 16, n -= 16)
            h = fold(load8(p) ^ secret[1], load8(p + 8) ^ h);
        a = load8(p + n - 16); /* the last 16 bytes */
        b = load8(p + n - 8);
    } else if (n >= 4) { /* two to four 4-byte words, overlapping */
        size_t middle = (n >> 3) << 2;
        a = load4(p) << 32 | load4(p + middle);
        b = load4(p + n - 4) << 32 | load4(p + n - 4 - middle);
    } else if (n > 0) {
        a = (uint64_t)(unsigned char)p[0] << 16 | (uint64_t)(unsigned char)p[n >> 1] << 8
            | (unsigned char)p[n - 1];
    }
    return fold(fold(a ^ secret[1], b ^ h) ^ secret[0], secret[1] ^ n);
}

static int table_init(Table *table) {
    table->used = 0;
    table->allocated = 256;
    table->mask = 1023;
    table->entries = PyMem_RawMalloc(table->allocated * sizeof(Entry));
    table->slots = PyMem_RawCalloc(table->mask + 1, sizeof(uint32_t));
    return table->entries && table->slots ? 0 : -1;
}

static void table_free(Table *table) {
    PyMem_RawFree(table->entries);
    PyMem_RawFree(table->slots);
}

/* Twice the slots, when half of them are taken. */
static int table_grow(Table *table) {
    size_t mask = table->mask * 2 + 1;
    uint32_t *slots = PyMem_RawCalloc(mask + 1, sizeof(uint32_t));
    if (slots == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < table->used; i++) {
        size_t at = table->entries[i].hash & mask;
        while (slots[at])
            at = (at + 1) & mask;
        slots[at] = (uint32_t)i + 1;
    }
    PyMem_RawFree(table->slots);
    table->slots = slots;
    table->mask = mask;
    return 0;
}

/* One more line of this key. */
static int table_count(Table *table, const char *key, Py_ssize_t size) {
    uint64_t hash = hash_key(key, (size_t)size);
    size_t at = hash & table->mask;
    for (; table->slots[at]; at = (at + 1) & table->mask) {
        Entry *entry = &table->entries[table->slots[at] - 1];
        if (entry->hash == hash && entry->size == size && memcmp(entry->key, key, size) == 0) {
            entry->count++;
            return 0;
        }
    }
    if (table->used == UINT32_MAX)
        return -1;
    if (table->used == table->allocated) {
        Entry *entries = PyMem_RawRealloc(table->entries, 2 * table->allocated * sizeof(Entry));
        if (entries == NULL)
            return -1;
        table->entries = entries;
        table->allocated *= 2;
    }
    table->entries[table->used] = (Entry){key, size, 1, hash};
    table->slots[at] = (uint32_t)++table->used;
    return (size_t)table->used * 2 > table->mask ? table_grow(table) : 0;
}

/* -- the scan ---------------------------------------------------------------------------- */

typedef enum { SCANNED, CROSSED, NO_MEMORY } Outcome;

/* Count the key of every line that begins after a newline in [p, end). */
static Outcome scan(const char *p, const Limits *limits, Table *table) {
    const char *end = limits->end;
    const char *newline = memchr(p, '\n', (size_t)(end - p));
    while (newline != NULL) {
        const char *line = newline + 1, *start;
        newline = memchr(line, '\n', (size_t)(end - line));
        const char *key_end = line_key(line, limits, &start);
        if (key_end > (newline ? newline : end))
            return CROSSED;
        if (table_count(table, start, key_end - start) < 0)
            return NO_MEMORY;
    }
    return SCANNED;
}

static PyObject *as_dict(const Table *table) {
    PyObject *counts = PyDict_New();
    for (Py_ssize_t i = 0; counts && i < table->used; i++) {
        const Entry *entry = &table->entries[i];
        PyObject *key = PyBytes_FromStringAndSize(entry->key, entry->size);
        PyObject *count = PyLong_FromSsize_t(entry->count);
        if (key == NULL || count == NULL || PyDict_SetItem(counts, key, count) < 0)
            Py_CLEAR(counts);
        Py_XDECREF(key);
        Py_XDECREF(count);
    }
    return counts;
}

/* A timestamp argument: `name` must be one of the shape (or None, when `optional`). */
static int stamp_argument(PyObject *value, const char *name, int optional, const char **out) {
    *out = NULL;
    if (optional && value == Py_None)
        return 0;
    Py_ssize_t size = 0;
    const char *text = PyUnicode_Check(value) ? PyUnicode_AsUTF8AndSize(value, &size) : NULL;
    if (text && size == STAMP_LEN && is_stamp(text, text + size)) {
        *out = text;
        return 0;
    }
    if (!PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "%s must be a timestamp like %s%s", name, SHAPE,
                     optional ? " or None" : "");
    return -1;
}

static PyObject *scanner_keys(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *buffer, *since, *first, *last;
    Py_ssize_t begin, stop;
    if (!PyArg_ParseTuple(args, "OnnOOO:keys", &buffer, &begin, &stop, &since, &first, &last))
        return NULL;
    Limits limits;
    if (stamp_argument(since, "since", 0, &limits.since) < 0
        || stamp_argument(first, "first", 1, &limits.first) < 0
        || stamp_argument(last, "last", 1, &limits.last) < 0)
        return NULL;
    if (limits.first == NULL || limits.last == NULL)
        limits.first = limits.last = NULL; /* no window: INSIDE never matches */
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    /* Positions as `findall` takes them: within the buffer. */
    begin = begin < 0 ? 0 : begin > view.len ? view.len : begin;
    stop = stop < begin ? begin : stop > view.len ? view.len : stop;
    limits.end = (const char *)view.buf + stop;
    Table table;
    Outcome outcome = NO_MEMORY;
    if (table_init(&table) == 0) {
        /* The view keeps the buffer as it is (a bytearray cannot be resized, an mmap closed). */
        Py_BEGIN_ALLOW_THREADS
        outcome = scan((const char *)view.buf + begin, &limits, &table);
        Py_END_ALLOW_THREADS
    }
    PyObject *result = NULL;
    if (outcome == SCANNED)
        result = as_dict(&table);
    else if (outcome == CROSSED)
        result = Py_NewRef(Py_None);
    else
        PyErr_NoMemory();
    table_free(&table);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"keys", scanner_keys, METH_VARARGS,
     "keys(buffer, begin, end, since, first, last) -> dict[bytes, int] | None\n\n"
     "Counter(classifier(since, first, last).findall(buffer, begin, end)) as a dict, or None\n"
     "when one of the keys would run across a newline."},
    {NULL, NULL, 0, NULL},
};

static int scanner_exec(PyObject *module) {
    PyObject *salt = PyBytes_FromString("maintenance.logstats._scan");
    if (salt == NULL)
        return -1;
    Py_hash_t hash = PyObject_Hash(salt);
    Py_DECREF(salt);
    secret[0] = (uint64_t)hash * 0x9e3779b97f4a7c15u | 1;
    secret[1] = fold(secret[0], 0xc2b2ae3d27d4eb4fu) | 1;
    return PyModule_AddStringConstant(module, "SOURCE_SHA256", SOURCE_SHA256);
}

static PyModuleDef_Slot slots[] = {{Py_mod_exec, scanner_exec}, {0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scan",
    "The compiled line scanner of log_statistics (see maintenance/logstats/chunks.py).", 0,
    methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__scan(void) { return PyModuleDef_Init(&module); }
