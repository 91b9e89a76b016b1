//go:build cgo

package cuda

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

// Our declarations of the cuBLAS entry points we call (cublas_api.h's
// signatures, unchanged from CUDA 11 to 13).
typedef int cublasStatus_t;
typedef void *cublasHandle_t;
typedef void *cudaStream_t;

typedef struct {
	void *lib;
	cublasStatus_t (*create)(cublasHandle_t *);
	cublasStatus_t (*destroy)(cublasHandle_t);
	cublasStatus_t (*setStream)(cublasHandle_t, cudaStream_t);
	cublasStatus_t (*getVersion)(cublasHandle_t, int *);
	cublasStatus_t (*gemmEx)(cublasHandle_t, int, int, int, int, int,
		const void *, const void *, int, int, const void *, int, int,
		const void *, void *, int, int, int, int);
} kvd_blas;

static const char *kvd_blas_open(kvd_blas *b, const char *path) {
	b->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!b->lib) {
		return dlerror();
	}
#define SYM(field, name) \
	if (!(*(void **)(&b->field) = dlsym(b->lib, name))) return name;
	SYM(create, "cublasCreate_v2")
	SYM(destroy, "cublasDestroy_v2")
	SYM(setStream, "cublasSetStream_v2")
	SYM(getVersion, "cublasGetVersion_v2")
	SYM(gemmEx, "cublasGemmEx")
#undef SYM
	return NULL;
}

static void kvd_blas_close(kvd_blas *b) { if (b->lib) dlclose(b->lib); }
static cublasStatus_t kvd_blas_create(kvd_blas *b, cublasHandle_t *h) { return b->create(h); }
static cublasStatus_t kvd_blas_destroy(kvd_blas *b, cublasHandle_t h) { return b->destroy(h); }
static cublasStatus_t kvd_blas_setStream(kvd_blas *b, cublasHandle_t h, cudaStream_t s) { return b->setStream(h, s); }
static cublasStatus_t kvd_blas_getVersion(kvd_blas *b, cublasHandle_t h, int *v) { return b->getVersion(h, v); }
static cublasStatus_t kvd_blas_gemmEx(kvd_blas *b, cublasHandle_t h, int ta, int tb, int m, int n, int k,
		float alpha, unsigned long long A, int at, int lda, unsigned long long B, int bt, int ldb,
		float beta, unsigned long long C, int ct, int ldc, int compute) {
	// alpha and beta are host floats for CUBLAS_COMPUTE_32F; algo -1 is
	// CUBLAS_GEMM_DEFAULT.
	return b->gemmEx(h, ta, tb, m, n, k, &alpha, (const void *)A, at, lda, (const void *)B, bt, ldb,
		&beta, (void *)C, ct, ldc, compute, -1);
}
*/
import "C"

import (
	"fmt"
	"os"
	"runtime"
	"unsafe"
)

// DataType is cudaDataType_t.
type DataType int

// The element types GEMMs take.
const (
	Float32  DataType = 0  // CUDA_R_32F
	Float16  DataType = 2  // CUDA_R_16F
	BFloat16 DataType = 14 // CUDA_R_16BF
)

// Op is cublasOperation_t.
type Op int

const (
	NoTrans Op = 0 // CUBLAS_OP_N
	Trans   Op = 1 // CUBLAS_OP_T
)

const computeF32 = 68 // CUBLAS_COMPUTE_32F: fp32 accumulation

// cublasLibs are tried in order; $KVD_LIBCUBLAS names another.
var cublasLibs = []string{"libcublas.so.13", "libcublas.so.12", "libcublas.so.11"}

// BLAS is a cuBLAS handle bound to one context.
type BLAS struct {
	c       *Context
	b       *C.kvd_blas
	h       C.cublasHandle_t
	Path    string // the library loaded
	Version int    // cublasGetVersion: major·10000 + minor·100 + patch
}

// BlasError is a failed cuBLAS call.
type BlasError struct {
	Call   string
	Status int // cublasStatus_t
}

func (e *BlasError) Error() string {
	names := map[int]string{1: "NOT_INITIALIZED", 3: "ALLOC_FAILED", 7: "INVALID_VALUE", 8: "ARCH_MISMATCH",
		11: "MAPPING_ERROR", 13: "EXECUTION_FAILED", 14: "INTERNAL_ERROR", 15: "NOT_SUPPORTED", 16: "LICENSE_ERROR"}
	if n, ok := names[e.Status]; ok {
		return fmt.Sprintf("%s: CUBLAS_STATUS_%s", e.Call, n)
	}
	return fmt.Sprintf("%s: cuBLAS status %d", e.Call, e.Status)
}

func blasCheck(call string, s C.cublasStatus_t) error {
	if s == 0 {
		return nil
	}
	return &BlasError{Call: call, Status: int(s)}
}

// BLAS loads cuBLAS and creates a handle in c. The error says which
// libraries were tried.
func (c *Context) BLAS() (*BLAS, error) {
	libs := cublasLibs
	if p := os.Getenv("KVD_LIBCUBLAS"); p != "" {
		libs = []string{p}
	}
	var why []string
	for _, path := range libs {
		b := (*C.kvd_blas)(C.calloc(1, C.size_t(unsafe.Sizeof(C.kvd_blas{}))))
		cpath := C.CString(path)
		msg := C.kvd_blas_open(b, cpath)
		C.free(unsafe.Pointer(cpath))
		if msg != nil {
			why = append(why, C.GoString(msg))
			C.kvd_blas_close(b)
			C.free(unsafe.Pointer(b))
			continue
		}
		bl := &BLAS{c: c, b: b, Path: path}
		if err := bl.init(); err != nil {
			bl.Close()
			return nil, err
		}
		return bl, nil
	}
	return nil, fmt.Errorf("cuda: no usable cuBLAS (set KVD_LIBCUBLAS to its path): %v", why)
}

func (bl *BLAS) init() error {
	defer runtime.UnlockOSThread()
	if err := bl.c.enter(); err != nil {
		return err
	}
	if err := blasCheck("cublasCreate", C.kvd_blas_create(bl.b, &bl.h)); err != nil {
		return err
	}
	var v C.int
	if err := blasCheck("cublasGetVersion", C.kvd_blas_getVersion(bl.b, bl.h, &v)); err != nil {
		return err
	}
	bl.Version = int(v)
	return nil
}

// Close destroys the handle and unloads the library.
func (bl *BLAS) Close() {
	if bl.b == nil {
		return
	}
	if bl.h != nil {
		runtime.LockOSThread()
		if bl.c.enter() == nil {
			C.kvd_blas_destroy(bl.b, bl.h)
		}
		runtime.UnlockOSThread()
	}
	C.kvd_blas_close(bl.b)
	C.free(unsafe.Pointer(bl.b))
	bl.b = nil
}

// SetStream makes later GEMMs run on s.
func (bl *BLAS) SetStream(s Stream) error {
	defer runtime.UnlockOSThread()
	if err := bl.c.enter(); err != nil {
		return err
	}
	return blasCheck("cublasSetStream", C.kvd_blas_setStream(bl.b, bl.h, C.cudaStream_t(s.s)))
}

// Matrix is a column-major device matrix for cuBLAS: Rows × Cols with
// leading dimension LD (≥ Rows) and element type Type.
type Matrix struct {
	Ptr  Ptr
	Type DataType
	LD   int
}

// Gemm computes c = alpha·op(a)·op(b) + beta·c, column-major as cuBLAS
// counts: op(a) is m × k, op(b) is k × n, c is m × n; accumulation in fp32.
// A row-major y[T, N] = x[T, K]·Wᵀ (W [N, K] row-major, the HF layout) is
// Gemm(Trans, NoTrans, N, T, K, W, x, y): column-major sees each row-major
// matrix transposed.
func (bl *BLAS) Gemm(ta, tb Op, m, n, k int, alpha float32, a, b Matrix, beta float32, c Matrix) error {
	defer runtime.UnlockOSThread()
	if err := bl.c.enter(); err != nil {
		return err
	}
	return blasCheck("cublasGemmEx", C.kvd_blas_gemmEx(bl.b, bl.h, C.int(ta), C.int(tb), C.int(m), C.int(n), C.int(k),
		C.float(alpha), C.ulonglong(a.Ptr), C.int(a.Type), C.int(a.LD), C.ulonglong(b.Ptr), C.int(b.Type), C.int(b.LD),
		C.float(beta), C.ulonglong(c.Ptr), C.int(c.Type), C.int(c.LD), computeF32))
}
