# Build and test. `make` builds every target; `make test` runs the CPU tests (CI runs it);
# `make test-gpu` and `make bench` need an NVIDIA GPU. SANITIZE=1 builds with ASan + UBSan.
CC ?= gcc
# no -march=native: the same numbers on every x86-64 machine (SSE2 code, glibc's libm)
CFLAGS ?= -O3
# ISO C without FP contraction: the quantizers must round exactly as the spec says
CFLAGS += -std=c11 -fopenmp -ffp-contract=off -Wall -Wextra -Wno-unused-function -Wno-unused-const-variable
LDLIBS = -lm
ifeq ($(SANITIZE),1)
  CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -g
endif
PYTHON ?= python3
HEADERS = $(wildcard llmc/*.h)

.PHONY: all test test-reference clean

all: train_gpt2 test/test_quant test/test_train

train_gpt2: train_gpt2.c $(HEADERS)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

test/test_quant: test/test_quant.c $(HEADERS)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

test/test_train: test/test_train.c train_gpt2.c $(HEADERS)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

# CPU tests: quantizers, CPU trainer vs the PyTorch reference states, bad input, data scripts
test: all
	./test/test_quant
	./test/test_train test/ref/*.bin
	bash test/test_badinput.sh
	$(PYTHON) test/test_data.py

# the PyTorch reference's own checks, and regenerating test/ref (needs torch)
test-reference:
	$(PYTHON) dev/reference/test_reference.py

clean:
	rm -f train_gpt2 test/test_quant test/test_train
