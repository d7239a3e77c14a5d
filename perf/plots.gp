# Plots for perf/bench.sh (called by report_plots in perf/sec-report.sh):
#   gnuplot -e "dir='PLOTDATA'; out='RESULTS'; peers='...'; rss_series='...';
#               scenarios='...'; have='latency cpu cpumesh rss failure'; nmesh=N" perf/plots.gp
# Data files (written by report_plots) live in dir; PNGs go to out.
set terminal pngcairo size 1400,560 font "sans,10"
set grid
set key outside right top
# 12 distinguishable line colours (the default cycle repeats after 8)
array C[12] = ["#9400d3", "#009e73", "#56b4e9", "#e69f00", "#f0e442", "#0072b2", "#e51e10", "#000000", "#a0522d", "#ff69b4", "#708090", "#00ced1"]
do for [k=1:12] { set linetype k lc rgb C[k] lw 2 }
set linetype cycle 12
ncols(f) = int(system("head -1 '" . f . "' | wc -w"))

# ---- latency percentiles vs rate ------------------------------------------------------------
if (strstrt(have, "latency") > 0) {
    set output out . "/latency.png"
    set multiplot layout 1,2 title "Latency vs request rate (fixed rates from perf-load; the rightmost point of each line: saturation, wrk / h2load)"
    set logscale xy
    set xlabel "requests/s"
    set ylabel "latency, ms"
    do for [proto in "h1 h2"] {
        set title (proto eq "h1" ? "HTTP/1.1" : "h2c")
        f = dir . "/latency-" . proto . ".dat"
        plot for [i=1:words(peers)] f index (i-1) using 1:3 with linespoints lc i lw 2 pt 7 title word(peers, i) . " p99", \
             for [i=1:words(peers)] f index (i-1) using 1:2 with linespoints lc i dt 2 pt 6 title word(peers, i) . " p50", \
             for [i=1:words(peers)] f index (i-1) using 1:4 with points lc i pt 2 ps 1.5 title word(peers, i) . " p99.9"
    }
    unset multiplot
    unset logscale
}

# ---- CPU per request per peer -----------------------------------------------------------------
if (strstrt(have, "cpu") > 0) {
    set output out . "/cpu.png"
    set style data histograms
    set style histogram clustered gap 1
    set style fill solid 0.8 border -1
    set boxwidth 0.9
    set xtics rotate by -20
    set ylabel "CPU us per request (the proxy's own)"
    set yrange [0:*]
    if (strstrt(have, "cpumesh") > 0) {
        set multiplot layout 1,2 title "CPU per request"
    }
    set title "one sidecar, plaintext"
    f = dir . "/cpu.dat"
    plot for [c=2:ncols(f)] f using c:xtic(1) title columnheader(c)
    if (strstrt(have, "cpumesh") > 0) {
        set title "mesh path, per sidecar (A: outbound, B: inbound)"
        f = dir . "/cpu-mesh.dat"
        plot for [c=2:ncols(f)] f using c:xtic(1) title columnheader(c)
        unset multiplot
    }
    unset style data
    set xtics norotate
    set yrange [*:*]
}

# ---- RSS over time ----------------------------------------------------------------------------
if (strstrt(have, "rss") > 0) {
    set output out . "/rss.png"
    set title "RSS every 100 ms: idle 1 s, then 1,000 req/s x 100 connections, then 1,000 idle client connections, then (mTLS paths) 1,000 idle mTLS connections to B"
    set xlabel "seconds from the start of each path's timeline"
    set ylabel "RSS, MB"
    set logscale y
    plot for [i=1:words(rss_series)] dir . "/rss.dat" index (i-1) using 1:2 with lines lt i lw 2 title word(rss_series, i)
    unset logscale
}

# ---- failure: success rate and latency around the event -----------------------------------------
if (strstrt(have, "failure") > 0) {
    set output out . "/failure.png"
    set multiplot layout 1,2 title "Endpoint failure at t = 0 (1,000 req/s through one remora; 100 ms buckets by intended send time)"
    set xlabel "seconds from the event"
    set title "success rate"
    set ylabel "% of requests that succeeded"
    set yrange [*:100.5]
    plot for [i=1:words(scenarios)] dir . "/failure.dat" index (i-1) using 1:2 with lines lw 2 title word(scenarios, i)
    set title "p99 latency"
    set ylabel "ms"
    set yrange [*:*]
    set logscale y
    plot for [i=1:words(scenarios)] dir . "/failure.dat" index (i-1) using 1:3 with lines lw 2 title word(scenarios, i)
    unset multiplot
}
