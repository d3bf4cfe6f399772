/* attention.c: filled in by the attention kernel work. */
#include "fastdecode.h"
#include "simd.h"
