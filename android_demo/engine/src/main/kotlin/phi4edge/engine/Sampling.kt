package phi4edge.engine

import java.nio.FloatBuffer
import java.util.SplittableRandom

/**
 * Next-token choice: greedy (temperature 0; the first of equal maxima, as numpy's argmax), or
 * temperature + top-p sampling from a seeded generator (the same seed gives the same tokens on any
 * JVM; not the Python runtime's numpy stream).
 */
internal class Sampler(private val temperature: Float, private val topP: Float, seed: Long) {
    private val random = SplittableRandom(seed)

    init {
        if (!temperature.isFinite() || temperature < 0f) throw RequestException("temperature must be a finite number >= 0, got $temperature")
        if (!(topP > 0f && topP <= 1f)) throw RequestException("top_p must be in (0, 1], got $topP")
    }

    fun next(logits: FloatBuffer, vocab: Int): Int {
        if (temperature == 0f) return argmax(logits, vocab)
        val top = logits.get(argmax(logits, vocab))
        val order = (0 until vocab).sortedByDescending { logits.get(it) }   // stable: ties keep id order
        val probs = DoubleArray(vocab) { Math.exp((logits.get(order[it]) - top).toDouble() / temperature) }
        var total = probs.sum()
        var keep = vocab
        if (topP < 1f) {   // the smallest prefix whose mass reaches top_p
            var mass = 0.0
            keep = 0
            while (keep < vocab && mass < topP * total) mass += probs[keep++]
            total = mass
        }
        var pick = random.nextDouble() * total
        for (i in 0 until keep) {
            pick -= probs[i]
            if (pick < 0) return order[i]
        }
        return order[keep - 1]
    }

    companion object {
        fun argmax(logits: FloatBuffer, vocab: Int): Int {
            var best = 0
            var value = logits.get(0)
            for (i in 1 until vocab) {
                val v = logits.get(i)
                if (v > value) { value = v; best = i }
            }
            return best
        }
    }
}
