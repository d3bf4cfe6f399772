/* sampling.c: filled in by the sampling kernel work. */
#include "fastdecode.h"
#include "simd.h"
