package phi4edge.engine

import kotlin.math.PI
import kotlin.math.cos
import kotlin.math.ln
import kotlin.math.sin
import kotlin.math.sqrt

/*
 * Log-mel features for the speech graph: a port of runtime/audio.py's log_mel and num_audio_tokens
 * (the reference; android_demo/engine/vectors/preprocess_vectors.py writes its outputs as test
 * vectors). 16 kHz mono in; decoding is Wav.read's, and there is no resampler here.
 */

/** Feature settings, runtime/audio.py's AudioSettings defaults (the bundle format fixes them). */
data class AudioSettings(
    val nFft: Int = 512,
    val winLength: Int = 400,
    val hopLength: Int = 160,
    val nMels: Int = 80,
    val preemphasis: Float = 0.97f,
    val melMin: Double = 0.0,
    val melMax: Double = 7690.0,
    val compressionRate: Int = 8,   // encoder frames per feature frame (conv subsampling)
    val downsampleRate: Int = 1,
) {
    init {
        require(nFft >= 2 && nFft and (nFft - 1) == 0) { "n_fft must be a power of two, got $nFft" }
        require(winLength in 1..nFft && hopLength > 0 && nMels > 0 && compressionRate > 0 && downsampleRate > 0) {
            "invalid audio settings $this"
        }
    }

    companion object {
        /** The speech encoder's sample rate. */
        const val SAMPLE_RATE = 16000
    }
}

/** Log-mel features, row-major [frames, nMels] in [values]: the speech graph's audio_features. */
class LogMel(val frames: Int, val nMels: Int, val values: FloatArray)

/**
 * [frames, n_mels] log-mel features of a mono 16 kHz waveform (samples in -1..1), frames =
 * (samples - 400) / 160 + 1: 400-sample frames every 160, each pre-emphasised (0.97, the first
 * sample by itself), scaled by 32768, Hamming-windowed, rfft 512, power, Kaldi mel filters, natural
 * log of max(mel power, 1). Float32 where numpy computes in float32 (pre-emphasis, power), double
 * where it computes in float64 (window, FFT, mel filters). Audio shorter than one window is refused
 * with runtime/audio.py's message.
 */
fun logMel(wave16k: FloatArray, s: AudioSettings = AudioSettings()): LogMel {
    val rate = AudioSettings.SAMPLE_RATE.toDouble()
    if (wave16k.size < s.winLength) {
        throw IllegalArgumentException("audio of ${formatFixed(wave16k.size / rate * 1000, 0)} ms is too short: " +
            "at least ${formatFixed(s.winLength / rate * 1000, 0)} ms is needed")
    }
    val frames = (wave16k.size - s.winLength) / s.hopLength + 1
    val bins = s.nFft / 2 + 1
    val window = hamming(s.winLength)
    val filters = MelFilters(s)
    val fft = RealFft(s.nFft)
    val frame = DoubleArray(s.nFft)
    val re = DoubleArray(bins)
    val im = DoubleArray(bins)
    val power = FloatArray(bins)
    val pre = s.preemphasis
    val out = FloatArray(frames * s.nMels)
    for (f in 0 until frames) {
        val start = f * s.hopLength
        for (j in 0 until s.winLength) {
            val cur = wave16k[start + j]
            val prev = wave16k[start + if (j == 0) 0 else j - 1]
            frame[j] = window[j] * ((cur - pre * prev) * 32768f).toDouble()
        }
        frame.fill(0.0, s.winLength, s.nFft)
        fft.transform(frame, re, im)
        for (b in 0 until bins) {
            // complex64, then |z| as hypotf (in double, rounded once) and its square in float32
            val r = re[b].toFloat().toDouble()
            val i = im[b].toFloat().toDouble()
            val a = sqrt(r * r + i * i).toFloat()
            power[b] = a * a
        }
        filters.apply(power, out, f * s.nMels)
    }
    return LogMel(frames, s.nMels, out)
}

/** Placeholder tokens for an audio of [frames] feature frames (about 12.5 per second). */
fun numAudioTokens(frames: Int, s: AudioSettings = AudioSettings()): Int {
    require(frames >= 0) { "negative frame count $frames" }
    val encoded = (frames + s.compressionRate - 1) / s.compressionRate
    return (encoded + s.downsampleRate - 1) / s.downsampleRate
}

/** numpy's hamming(m): 0.54 + 0.46 cos(pi n / (m - 1)), n = 1 - m, 3 - m, ..., m - 1. */
private fun hamming(m: Int): DoubleArray {
    if (m == 1) return doubleArrayOf(1.0)
    return DoubleArray(m) { 0.54 + 0.46 * cos(PI * (1 - m + 2 * it).toDouble() / (m - 1)) }
}

/** runtime/audio.py's mel_filters: triangles on the Kaldi mel scale, in double, used as float32. */
private class MelFilters(s: AudioSettings) {
    private val nMels = s.nMels
    private val first = IntArray(nMels)      // first FFT bin with a nonzero weight
    private val weights: Array<FloatArray>   // weights from `first` on

    init {
        fun mel(hz: Double) = 1127.0 * ln(1.0 + hz / 700.0)
        val bins = s.nFft / 2 + 1
        val lo = mel(s.melMin)
        val hi = mel(s.melMax)
        val n = nMels + 2
        val step = (hi - lo) / (n - 1)   // numpy's linspace: start + i * step, the last one exactly stop
        val edges = DoubleArray(n) { if (it == n - 1) hi else it * step + lo }
        val binMel = DoubleArray(bins) { mel(AudioSettings.SAMPLE_RATE.toDouble() / s.nFft * it) }
        weights = Array(nMels) { m ->
            val full = FloatArray(bins) { b ->
                val down = -(edges[m] - binMel[b]) / (edges[m + 1] - edges[m])
                val up = (edges[m + 2] - binMel[b]) / (edges[m + 2] - edges[m + 1])
                maxOf(0.0, minOf(down, up)).toFloat()
            }
            val a = full.indexOfFirst { it != 0f }
            if (a < 0) {
                first[m] = 0; FloatArray(0)
            } else {
                val b = full.indexOfLast { it != 0f }
                first[m] = a; full.copyOfRange(a, b + 1)
            }
        }
    }

    /** out[offset + m] = ln(max(power . filter m, 1)). */
    fun apply(power: FloatArray, out: FloatArray, offset: Int) {
        for (m in 0 until nMels) {
            val w = weights[m]
            val a = first[m]
            var acc = 0.0
            for (i in w.indices) acc += power[a + i].toDouble() * w[i]
            val v = maxOf(acc.toFloat(), 1f)
            out[offset + m] = ln(v.toDouble()).toFloat()
        }
    }
}

/**
 * Radix-2 FFT of n real samples (n a power of two; 512 here): one complex FFT of n/2 points over the
 * even/odd samples, then the split into the n/2 + 1 bins of numpy's rfft. Hand-written on purpose:
 * no FFT library that runs on both Android and the desktop JVM is worth a dependency for one size.
 */
internal class RealFft(private val n: Int) {
    private val half = n / 2
    private val cosT: DoubleArray   // e^{-2 pi i k / n} = cos - i sin, k < n/2
    private val sinT: DoubleArray
    private val rev: IntArray        // bit reversal for n/2 points
    private val zr = DoubleArray(maxOf(half, 1))
    private val zi = DoubleArray(maxOf(half, 1))

    init {
        require(n >= 2 && n and (n - 1) == 0) { "FFT size must be a power of two, got $n" }
        cosT = DoubleArray(half) { cos(2 * PI * it / n) }
        sinT = DoubleArray(half) { sin(2 * PI * it / n) }
        val bits = Integer.numberOfTrailingZeros(half)
        rev = IntArray(half) { if (bits == 0) 0 else Integer.reverse(it) ushr (32 - bits) }
    }

    /** re/im (n/2 + 1 each) = rfft(x[0 until n]). */
    fun transform(x: DoubleArray, re: DoubleArray, im: DoubleArray) {
        for (k in 0 until half) {
            zr[rev[k]] = x[2 * k]
            zi[rev[k]] = x[2 * k + 1]
        }
        // iterative radix-2 decimation in time over n/2 points; twiddles of the n/2-point FFT are
        // every other one of the n-point table
        var size = 2
        while (size <= half) {
            val h = size / 2
            val stride = n / size
            var start = 0
            while (start < half) {
                for (j in 0 until h) {
                    val wr = cosT[j * stride]
                    val wi = -sinT[j * stride]
                    val a = start + j
                    val b = a + h
                    val tr = zr[b] * wr - zi[b] * wi
                    val ti = zr[b] * wi + zi[b] * wr
                    zr[b] = zr[a] - tr; zi[b] = zi[a] - ti
                    zr[a] += tr; zi[a] += ti
                }
                start += size
            }
            size *= 2
        }
        // X[k] = E[k] + e^{-2 pi i k / n} O[k], with E = (Z[k] + conj Z[n/2 - k]) / 2 and
        // O = (Z[k] - conj Z[n/2 - k]) / 2i the FFTs of the even and odd samples
        re[0] = zr[0] + zi[0]; im[0] = 0.0
        re[half] = zr[0] - zi[0]; im[half] = 0.0
        for (k in 1 until half) {
            val ar = zr[k]
            val ai = zi[k]
            val br = zr[half - k]
            val bi = -zi[half - k]
            val er = (ar + br) * 0.5
            val ei = (ai + bi) * 0.5
            val or = (ai - bi) * 0.5    // (a - b) / 2i = (ai - bi)/2 - i (ar - br)/2
            val oi = -(ar - br) * 0.5
            val wr = cosT[k]
            val wi = -sinT[k]
            re[k] = er + or * wr - oi * wi
            im[k] = ei + or * wi + oi * wr
        }
    }
}
