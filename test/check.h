// defines: CHECK, check_summary
// A minimal test harness: every CHECK counts, failures print where and why, and the summary
// line "N passed, M failed" is what CI reads.
#ifndef TEST_CHECK_H
#define TEST_CHECK_H

#include <stdio.h>

static int checks_passed = 0, checks_failed = 0;

#define CHECK(cond, ...) do { \
    if (cond) { checks_passed++; } \
    else { checks_failed++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } \
} while (0)

// prints the summary and returns the exit code
static int check_summary(const char *suite) {
    printf("%s: %d passed, %d failed\n", suite, checks_passed, checks_failed);
    return checks_failed == 0 ? 0 : 1;
}

#endif
