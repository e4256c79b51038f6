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

# CUDA targets build wherever nvcc is (CI compiles them with no GPU) and run with `make test-gpu`
NVCC ?= nvcc
# sm_90a (Hopper's wgmma, llmc/gemm_fp8.cuh) beside plain compute_90 PTX, whose wgmma kernels trap
NVCC_FLAGS ?= -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_90,code=compute_90
ifneq ($(shell command -v $(NVCC) 2>/dev/null),)
  CUDA_TARGETS = train_gpt2_fp4 test/test_gpu_train test/test_quant_gpu test/test_kernels_gpu dev/cuda/fp8_gemm \
                 dev/bench/libcupti_trace.so
else
  $(info nvcc not found: skipping the CUDA targets)
endif

.PHONY: all train train-cpu data test test-sanitize test-gpu test-multi-gpu bench test-reference clean

all: train_gpt2 test/test_quant test/test_train test/test_dist_cpu $(CUDA_TARGETS)

train_gpt2: train_gpt2.c $(HEADERS)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

test/test_quant: test/test_quant.c $(HEADERS)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

test/test_train: test/test_train.c train_gpt2.c test/ref_file.h $(HEADERS)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

test/test_dist_cpu: test/test_dist_cpu.c $(HEADERS)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

TINY = data/tinyshakespeare/tiny_shakespeare_train.bin

# tiny shakespeare + the GPT-2 decode table (downloads, or reads ../shared/data offline)
data: $(TINY)
$(TINY):
	$(PYTHON) dev/data/tinyshakespeare.py

# the GPU trainer on tiny shakespeare with its defaults (GPT-2 124M, bf16); the CPU reference
train: train_gpt2_fp4 $(TINY)
	./train_gpt2_fp4
train-cpu: train_gpt2 $(TINY)
	./train_gpt2

# CPU tests: quantizers, CPU trainer vs the PyTorch reference states, bad input, resume and
# learning runs, the curves scripts, data scripts, the multi-process start's rendezvous, the
# timeline's accounting
test: all $(TINY)
	./test/test_quant
	./test/test_train test/ref/*.bin
	./test/test_dist_cpu
	bash test/test_badinput.sh
	bash test/test_train_run.sh
	bash test/test_curves.sh
	$(PYTHON) test/test_data.py
	$(PYTHON) test/test_timeline.py

# the C tests again under AddressSanitizer + UndefinedBehaviorSanitizer (rebuilds, then cleans)
test-sanitize:
	$(MAKE) clean
	$(MAKE) SANITIZE=1 train_gpt2 test/test_quant test/test_train
	./test/test_quant
	./test/test_train test/ref/*.bin
	bash test/test_badinput.sh
	$(MAKE) clean

CUDA_HEADERS = $(HEADERS) $(wildcard llmc/*.cuh) llmc/cudnn_attention.h
CUDA_LIBS = -lcublasLt -lcublas -lcudnn -lnvrtc
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(shell command -v $(NVCC) 2>/dev/null))

# Multi-GPU: NCCL (NCCL_HOME, else the first of CUDA_HOME, /usr and PyPI's nvidia-nccl package
# that has include/nccl.h; NO_MULTI_GPU=1 builds a single-GPU trainer without it) and, optionally,
# MPI for `mpirun` starts (found through Open MPI's mpicc; USE_MPI=0 leaves it out, MPI_CFLAGS /
# MPI_LIBS name another MPI). Without MPI, several processes start with RANK / WORLD_SIZE /
# LOCAL_RANK and --dist-init (scripts/run_multi_gpu.sh).
ifneq ($(NO_MULTI_GPU),1)
  NCCL_PIP := $(shell $(PYTHON) -c "import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])" 2>/dev/null)
  NCCL_HOME ?= $(patsubst %/include/nccl.h,%,$(firstword $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h \
                                                                      $(NCCL_PIP)/include/nccl.h)))
  ifeq ($(wildcard $(NCCL_HOME)/include/nccl.h),)
    $(error NCCL not found (no nccl.h): set NCCL_HOME, or NO_MULTI_GPU=1 for a single-GPU build)
  endif
  NCCL_LIB := $(firstword $(wildcard $(NCCL_HOME)/lib/libnccl.so.2 $(NCCL_HOME)/lib64/libnccl.so.2))
  TRAIN_FLAGS += -DUSE_NCCL -I$(NCCL_HOME)/include
  TRAIN_LIBS += $(if $(NCCL_LIB),-L$(dir $(NCCL_LIB)) -Xlinker -rpath -Xlinker $(dir $(NCCL_LIB))) -l:libnccl.so.2
  USE_MPI ?= $(if $(shell mpicc -showme:version 2>/dev/null),1,0)
  ifeq ($(USE_MPI),1)
    MPI_DIRS := $(shell mpicc -showme:libdirs 2>/dev/null)
    MPI_CFLAGS ?= $(addprefix -I,$(shell mpicc -showme:incdirs 2>/dev/null))
    MPI_LIBS ?= $(addprefix -L,$(MPI_DIRS)) $(addprefix -Xlinker -rpath -Xlinker ,$(MPI_DIRS)) \
                $(addprefix -l,$(shell mpicc -showme:libs 2>/dev/null))
    TRAIN_FLAGS += -DUSE_MPI $(MPI_CFLAGS)
    TRAIN_LIBS += $(MPI_LIBS)
  endif
endif

# cuDNN's attention goes through its C++ frontend (headers only, from PyPI, kept in .deps/)
CUDNN_FRONTEND_VERSION = 1.32.0
CUDNN_FE = .deps/cudnn_frontend/include
$(CUDNN_FE)/cudnn_frontend.h:
	rm -rf .deps/cudnn_frontend .deps/wheel && mkdir -p .deps/cudnn_frontend .deps/wheel
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
		-d .deps/wheel nvidia-cudnn-frontend==$(CUDNN_FRONTEND_VERSION)
	$(PYTHON) -c "import glob, zipfile; z = zipfile.ZipFile(glob.glob('.deps/wheel/*.whl')[0]); \
		[z.extract(n, '.deps/cudnn_frontend') for n in z.namelist() if n.startswith('include/')]"
	rm -rf .deps/wheel

llmc/cudnn_attention.o: llmc/cudnn_attention.cpp llmc/cudnn_attention.h llmc/utils.h $(CUDNN_FE)/cudnn_frontend.h
	$(CXX) -O2 -std=c++17 -I$(CUDA_HOME)/include -I$(CUDNN_FE) -Illmc -c -o $@ $<

train_gpt2_fp4: train_gpt2_fp4.cu llmc/cudnn_attention.o $(CUDA_HEADERS)
	$(NVCC) $(NVCC_FLAGS) $(TRAIN_FLAGS) -o $@ $< llmc/cudnn_attention.o $(CUDA_LIBS) $(TRAIN_LIBS)

test/test_gpu_train: test/test_gpu_train.cu train_gpt2_fp4.cu llmc/cudnn_attention.o test/ref_file.h $(CUDA_HEADERS)
	$(NVCC) $(NVCC_FLAGS) $(TRAIN_FLAGS) -o $@ $< llmc/cudnn_attention.o $(CUDA_LIBS) $(TRAIN_LIBS)

test/test_quant_gpu: test/test_quant_gpu.cu $(CUDA_HEADERS)
	$(NVCC) $(NVCC_FLAGS) -o $@ $< -lcublasLt

dev/cuda/fp8_gemm: dev/cuda/fp8_gemm.cu $(CUDA_HEADERS)
	$(NVCC) $(NVCC_FLAGS) -o $@ $< -lcublasLt

# the timeline tracer (dev/bench/timeline.py): CUPTI's activity records of any CUDA program
dev/bench/libcupti_trace.so: dev/bench/cupti_trace.c
	$(CC) -O2 -std=c11 -Wall -Wextra -shared -fPIC -I$(CUDA_HOME)/include -o $@ $< \
		-L$(CUDA_HOME)/lib64 -L$(CUDA_HOME)/lib -lcupti

test/test_kernels_gpu: test/test_kernels_gpu.cu llmc/cudnn_attention.o $(CUDA_HEADERS)
	$(NVCC) $(NVCC_FLAGS) -o $@ $< llmc/cudnn_attention.o $(CUDA_LIBS)

# GPU tests (needs an NVIDIA GPU): the quantizers on the device vs the CPU, bit for bit; the
# kernels and GEMMs vs FP64 references; the GPU trainer's recipes vs the PyTorch states,
# determinism, DGE, resume, learning on tiny shakespeare (test_train_run.sh compares the FP8
# attention core's losses with the CPU trainer's, so that is built too)
test-gpu: $(CUDA_TARGETS) train_gpt2 $(TINY)
	./test/test_quant_gpu
	./test/test_kernels_gpu
	./test/test_gpu_train test/ref/*.bin
	BIN=./train_gpt2_fp4 RECIPES="bf16 fp8 fp4" bash test/test_train_run.sh

# data parallel on all visible GPUs (at least 2) against one: trajectories, ZeRO-1, a killed rank,
# resume, resharding, mpirun
test-multi-gpu: train_gpt2_fp4 $(TINY)
	bash test/test_multi_gpu.sh

# throughput, MFU and peak memory against a PyTorch baseline in the same run (needs a GPU, PyTorch);
# BENCH_ARGS passes flags, e.g. make bench BENCH_ARGS="--no-pytorch --steps 10 --configs gpt2:d12:32"
bench: train_gpt2_fp4 $(TINY)
	$(PYTHON) dev/bench/bench.py $(BENCH_ARGS)

# the PyTorch reference's own checks, and regenerating test/ref (needs torch)
test-reference:
	$(PYTHON) dev/reference/test_reference.py

clean:
	rm -f llmc/cudnn_attention.o train_gpt2 train_gpt2_fp4 test/test_quant test/test_train test/test_quant_gpu test/test_gpu_train \
		test/test_kernels_gpu test/test_dist_cpu dev/cuda/fp8_gemm dev/bench/libcupti_trace.so
